//! `shoal.toml`: what a bundle says about the app it holds.
//!
//! Parsing goes from raw to validated: [`RawManifest`] mirrors the file with
//! `deny_unknown_fields`, and [`Manifest::parse`] checks it and returns an [`AppSpec`], so a
//! typo is an error naming the field and the file rather than a silently ignored setting.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_proxy::policy::PolicySettings;
use shoal_proxy::route::is_valid_app_name;

use crate::cron::{CatchUp, Overlap, Retry, Schedule, SettingError};

/// The file every bundle holds at its root.
pub const MANIFEST_FILE: &str = "shoal.toml";

/// What an app is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppKind {
    /// Files served by every node, HTML rewritten under a path prefix.
    Static,
    /// A long-running process behind the ingress.
    Service,
    /// A command run on a schedule.
    Cron,
}

impl std::fmt::Display for AppKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AppKind::Static => "static",
            AppKind::Service => "service",
            AppKind::Cron => "cron",
        })
    }
}

/// `shoal.toml` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    kind: AppKind,
    #[serde(default)]
    domains: Vec<String>,
    command: Option<Command>,
    port: Option<u16>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    schedule: Option<String>,
    timezone: Option<String>,
    timeout: Option<String>,
    overlap: Option<String>,
    catch_up: Option<String>,
    retries: Option<u32>,
    retry_backoff: Option<String>,
    #[serde(default, rename = "static")]
    static_files: Option<RawStatic>,
    resources: Option<RawResources>,
    scale: Option<RawScale>,
    policy: Option<PolicySettings>,
}

/// A command as one shell-free string (split on whitespace) or as an argv array.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Command {
    Line(String),
    Argv(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatic {
    spa_fallback: Option<String>,
    max_age: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    memory: Option<String>,
    cpus: Option<f64>,
    pids: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScale {
    min: Option<u32>,
    max: Option<u32>,
    idle_timeout: Option<String>,
    pause_after: Option<String>,
    concurrency_target: Option<u32>,
}

/// A validated app description: everything a release needs besides its bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppSpec {
    /// The app's name, a DNS label.
    pub name: String,
    /// What it is.
    pub kind: AppKind,
    /// Extra host names it answers on.
    pub domains: Vec<String>,
    /// argv of the process (service and cron apps).
    pub command: Vec<String>,
    /// The port the process listens on (service apps).
    pub port: Option<u16>,
    /// Environment of the process.
    pub env: BTreeMap<String, String>,
    /// Cron schedule (cron apps).
    pub schedule: Option<String>,
    /// How static files are served.
    pub static_files: StaticSpec,
    /// Container limits.
    pub resources: Resources,
    /// Instance counts and idle behaviour.
    pub scale: Scale,
    /// How a cron job's runs go (defaults for other kinds).
    #[serde(default)]
    pub job: JobSpec,
    /// `[policy]`: the policy fields this release sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySettings>,
}

/// A cron job's settings besides its schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// IANA time zone the schedule is read in (UTC when none).
    pub timezone: Option<String>,
    /// A run is killed after this many seconds.
    pub timeout_secs: u64,
    /// What a tick does while a run is still going.
    pub overlap: Overlap,
    /// What happens to ticks missed while no orchestrator could fire them.
    pub catch_up: CatchUp,
    /// How failed runs are tried again.
    pub retry: Retry,
}

/// A run's time limit when the job sets none.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3600);

impl Default for JobSpec {
    fn default() -> Self {
        Self {
            timezone: None,
            timeout_secs: DEFAULT_JOB_TIMEOUT.as_secs(),
            overlap: Overlap::default(),
            catch_up: CatchUp::default(),
            retry: Retry::default(),
        }
    }
}

/// `[static]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StaticSpec {
    /// File served for paths that match nothing (single-page apps).
    pub spa_fallback: Option<String>,
    /// `max-age` for non-HTML assets; none means always revalidate.
    pub max_age: Option<u32>,
}

/// `[resources]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Memory limit in bytes (swap equals it).
    pub memory_bytes: u64,
    /// CPU limit in cores.
    pub cpus: f64,
    /// Process count limit.
    pub pids: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            memory_bytes: 256 * 1024 * 1024,
            cpus: 1.0,
            pids: 256,
        }
    }
}

/// `[scale]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scale {
    /// Instances kept warm.
    pub min: u32,
    /// Most instances at once.
    pub max: u32,
    /// Stopped after this long idle.
    pub idle_timeout: Duration,
    /// Paused after this long idle.
    pub pause_after: Duration,
    /// In-flight requests per instance before scaling out.
    pub concurrency_target: u32,
}

impl Default for Scale {
    fn default() -> Self {
        Self {
            min: 0,
            max: 1,
            idle_timeout: Duration::from_secs(600),
            pause_after: Duration::from_secs(30),
            concurrency_target: 50,
        }
    }
}

/// A manifest that could not be read or is wrong; the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ManifestError {
    file: String,
    message: String,
}

/// Reading and checking `shoal.toml`.
pub struct Manifest;

impl Manifest {
    /// Reads `dir/shoal.toml`; `name_override` replaces its `name` (the CLI's `--name`).
    pub fn load(dir: &Path, name_override: Option<&str>) -> Result<AppSpec, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|error| ManifestError {
            file: path.display().to_string(),
            message: match error.kind() {
                std::io::ErrorKind::NotFound => {
                    "not found: every app directory needs a shoal.toml with at least `name` and `kind`"
                        .to_owned()
                }
                _ => error.to_string(),
            },
        })?;
        Self::parse(&text, &path.display().to_string(), name_override)
    }

    /// Parses and validates manifest text; `file` names it in errors.
    pub fn parse(
        text: &str,
        file: &str,
        name_override: Option<&str>,
    ) -> Result<AppSpec, ManifestError> {
        let error = |message: String| ManifestError {
            file: file.to_owned(),
            message,
        };
        let raw: RawManifest = toml::from_str(text).map_err(|e| error(toml_message(&e)))?;
        validate(raw, name_override).map_err(error)
    }
}

fn toml_message(error: &toml::de::Error) -> String {
    let message = error.message().trim().to_owned();
    match error.span() {
        Some(span) => format!("{message} (at byte {})", span.start),
        None => message,
    }
}

fn validate(raw: RawManifest, name_override: Option<&str>) -> Result<AppSpec, String> {
    let name = name_override.unwrap_or(&raw.name).to_owned();
    if !is_valid_app_name(&name) {
        return Err(format!(
            "`name = \"{name}\"` is not a valid app name: use 1-63 lowercase letters, digits and \
             dashes, not starting or ending with a dash"
        ));
    }
    let job = job_spec(&raw)?;
    let command = match raw.command {
        None => Vec::new(),
        Some(Command::Line(line)) => line.split_whitespace().map(str::to_owned).collect(),
        Some(Command::Argv(argv)) => argv,
    };
    check_kind_fields(raw.kind, &command, raw.port, raw.schedule.as_deref())?;
    if raw.kind != AppKind::Static && raw.static_files.is_some() {
        return Err("`[static]` is only for `kind = \"static\"` apps".to_owned());
    }
    let static_files = raw.static_files.map(|s| StaticSpec {
        spa_fallback: s.spa_fallback,
        max_age: s.max_age,
    });
    for domain in &raw.domains {
        if domain.is_empty() || domain.contains(['/', ':', ' ']) {
            return Err(format!("`domains` entry `{domain}` is not a host name"));
        }
    }
    Ok(AppSpec {
        name,
        kind: raw.kind,
        domains: raw.domains,
        command,
        port: raw.port,
        env: raw.env,
        schedule: raw.schedule,
        static_files: static_files.unwrap_or_default(),
        resources: resources(raw.resources)?,
        scale: scale(raw.scale)?,
        job,
        policy: match raw.policy {
            Some(policy) => {
                policy
                    .validate()
                    .map_err(|error| format!("`[policy]`: {error}"))?;
                Some(policy)
            }
            None => None,
        },
    })
}

/// The cron settings, checked; the schedule is parsed in its time zone here, so a bad one is
/// refused at deploy.
fn job_spec(raw: &RawManifest) -> Result<JobSpec, String> {
    let set = [
        ("timezone", raw.timezone.is_some()),
        ("timeout", raw.timeout.is_some()),
        ("overlap", raw.overlap.is_some()),
        ("catch_up", raw.catch_up.is_some()),
        ("retries", raw.retries.is_some()),
        ("retry_backoff", raw.retry_backoff.is_some()),
    ];
    if raw.kind != AppKind::Cron {
        if let Some((field, _)) = set.iter().find(|(_, present)| *present) {
            return Err(format!("`{field}` is only for `kind = \"cron\"` apps"));
        }
        return Ok(JobSpec::default());
    }
    if let Some(expr) = raw.schedule.as_deref() {
        check_schedule_shape(expr)?;
        let schedule =
            Schedule::parse(expr, raw.timezone.as_deref()).map_err(|error| error.to_string())?;
        if schedule
            .next_after(crate::cron::Tick::from_unix_seconds(0))
            .is_none()
        {
            return Err(format!("schedule `{expr}` never fires (no such date)"));
        }
    }
    let timeout = match &raw.timeout {
        Some(text) => {
            let timeout = humantime::parse_duration(text)
                .map_err(|_| format!("`timeout = \"{text}\"` is not a duration like \"10m\""))?;
            if timeout < Duration::from_secs(1) {
                return Err(format!("`timeout = \"{text}\"` is under one second"));
            }
            timeout
        }
        None => DEFAULT_JOB_TIMEOUT,
    };
    let overlap = match &raw.overlap {
        Some(text) => text.parse().map_err(|e: SettingError| e.to_string())?,
        None => Overlap::default(),
    };
    let catch_up = match &raw.catch_up {
        Some(text) => text.parse().map_err(|e: SettingError| e.to_string())?,
        None => CatchUp::default(),
    };
    let retry = match (raw.retries, &raw.retry_backoff) {
        (None, None) => Retry::default(),
        (retries, backoff) => {
            Retry::parse(retries.unwrap_or(0), backoff.as_deref().unwrap_or("10s"))
                .map_err(|error| error.to_string())?
        }
    };
    Ok(JobSpec {
        timezone: raw.timezone.clone(),
        timeout_secs: timeout.as_secs(),
        overlap,
        catch_up,
        retry,
    })
}

fn check_kind_fields(
    kind: AppKind,
    command: &[String],
    port: Option<u16>,
    schedule: Option<&str>,
) -> Result<(), String> {
    match kind {
        AppKind::Static => {
            if !command.is_empty() || port.is_some() || schedule.is_some() {
                return Err(
                    "`command`, `port` and `schedule` are not for `kind = \"static\"` apps: \
                            static apps are files served as they are"
                        .to_owned(),
                );
            }
        }
        AppKind::Service => {
            if command.is_empty() {
                return Err("`kind = \"service\"` needs `command`, e.g. `command = [\"node\", \"server.js\"]`".to_owned());
            }
            if port.is_none() {
                return Err(
                    "`kind = \"service\"` needs `port`, the port the app listens on".to_owned(),
                );
            }
            if schedule.is_some() {
                return Err("`schedule` is only for `kind = \"cron\"` apps".to_owned());
            }
        }
        AppKind::Cron => {
            if command.is_empty() {
                return Err("`kind = \"cron\"` needs `command`".to_owned());
            }
            let Some(schedule) = schedule else {
                return Err(
                    "`kind = \"cron\"` needs `schedule`, e.g. `schedule = \"*/5 * * * *\"`"
                        .to_owned(),
                );
            };
            check_schedule_shape(schedule)?;
        }
    }
    Ok(())
}

/// A first check of the schedule's shape; the cron scheduler parses it fully.
fn check_schedule_shape(schedule: &str) -> Result<(), String> {
    let fields = schedule.split_whitespace().count();
    let shortcut = schedule.trim_start().starts_with('@') && fields == 1;
    if shortcut || fields == 5 || fields == 6 {
        Ok(())
    } else {
        Err(format!(
            "`schedule = \"{schedule}\"` is not a cron schedule: use five fields \
             (minute hour day month weekday), six with leading seconds, or a shortcut like `@hourly`"
        ))
    }
}

fn resources(raw: Option<RawResources>) -> Result<Resources, String> {
    let defaults = Resources::default();
    let Some(raw) = raw else { return Ok(defaults) };
    let memory_bytes = match raw.memory {
        Some(text) => parse_size(&text).ok_or_else(|| {
            format!("`resources.memory = \"{text}\"` is not a size like \"256MiB\"")
        })?,
        None => defaults.memory_bytes,
    };
    if memory_bytes < 16 * 1024 * 1024 {
        return Err("`resources.memory` must be at least 16MiB".to_owned());
    }
    let cpus = raw.cpus.unwrap_or(defaults.cpus);
    if !(cpus > 0.0 && cpus <= 1024.0) {
        return Err("`resources.cpus` must be above 0".to_owned());
    }
    let pids = raw.pids.unwrap_or(defaults.pids);
    if pids < 8 {
        return Err("`resources.pids` must be at least 8".to_owned());
    }
    Ok(Resources {
        memory_bytes,
        cpus,
        pids,
    })
}

fn scale(raw: Option<RawScale>) -> Result<Scale, String> {
    let defaults = Scale::default();
    let Some(raw) = raw else { return Ok(defaults) };
    let duration = |field: &str, value: Option<String>, default: Duration| match value {
        None => Ok(default),
        Some(text) => humantime::parse_duration(&text).map_err(|_| {
            format!("`scale.{field} = \"{text}\"` is not a duration like \"30s\" or \"10m\"")
        }),
    };
    let scale = Scale {
        min: raw.min.unwrap_or(defaults.min),
        max: raw.max.unwrap_or(defaults.max),
        idle_timeout: duration("idle_timeout", raw.idle_timeout, defaults.idle_timeout)?,
        pause_after: duration("pause_after", raw.pause_after, defaults.pause_after)?,
        concurrency_target: raw
            .concurrency_target
            .unwrap_or(defaults.concurrency_target),
    };
    if scale.max == 0 || scale.min > scale.max {
        return Err(format!(
            "`scale` needs 0 <= min <= max and max >= 1 (got min {} and max {})",
            scale.min, scale.max
        ));
    }
    if scale.concurrency_target == 0 {
        return Err("`scale.concurrency_target` must be at least 1".to_owned());
    }
    Ok(scale)
}

/// "256MiB", "1GiB", "512M", "1048576" -> bytes (the policy's sizes read the same way).
pub use shoal_proxy::policy::parse_size;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AppSpec, String> {
        Manifest::parse(text, "app/shoal.toml", None).map_err(|e| e.to_string())
    }

    #[test]
    fn a_static_app_needs_only_name_and_kind() {
        let spec = parse("name = \"dash\"\nkind = \"static\"\n").unwrap();
        assert_eq!(spec.name, "dash");
        assert_eq!(spec.kind, AppKind::Static);
        assert_eq!(spec.static_files, StaticSpec::default());
    }

    #[test]
    fn unknown_fields_are_named_with_the_file() {
        let error = parse("name = \"dash\"\nkind = \"static\"\nprot = 3\n").unwrap_err();
        assert!(error.starts_with("app/shoal.toml: "), "{error}");
        assert!(error.contains("unknown field `prot`"), "{error}");
        let error = parse("name = \"d\"\nkind = \"static\"\n[static]\nspa = true\n").unwrap_err();
        assert!(error.contains("unknown field `spa`"), "{error}");
    }

    #[test]
    fn each_kind_checks_its_fields() {
        let service = parse(
            "name = \"api\"\nkind = \"service\"\ncommand = \"node server.js\"\nport = 3000\n",
        )
        .unwrap();
        assert_eq!(service.command, ["node", "server.js"]);
        assert!(parse("name = \"api\"\nkind = \"service\"\nport = 3000\n")
            .unwrap_err()
            .contains("needs `command`"));
        assert!(
            parse("name = \"api\"\nkind = \"service\"\ncommand = [\"node\"]\n")
                .unwrap_err()
                .contains("needs `port`")
        );
        assert!(parse("name = \"s\"\nkind = \"static\"\nport = 1\n")
            .unwrap_err()
            .contains("not for `kind = \"static\"`"));
        assert!(
            parse("name = \"j\"\nkind = \"cron\"\ncommand = [\"x\"]\nschedule = \"* *\"\n")
                .unwrap_err()
                .contains("is not a cron schedule")
        );
        parse("name = \"j\"\nkind = \"cron\"\ncommand = [\"x\"]\nschedule = \"@hourly\"\n")
            .unwrap();
    }

    #[test]
    fn cron_settings_are_checked_at_deploy_with_the_bad_part_named() {
        let job = |extra: &str| {
            parse(&format!(
                "name = \"j\"\nkind = \"cron\"\ncommand = [\"x\"]\n{extra}\n"
            ))
        };
        let spec = job(
            "schedule = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"\ntimeout = \"5m\"\n\
             overlap = \"replace\"\ncatch_up = \"none\"\nretries = 2\nretry_backoff = \"30s\"",
        )
        .unwrap();
        assert_eq!(spec.job.timezone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(spec.job.timeout_secs, 300);
        assert_eq!(spec.job.overlap, Overlap::Replace);
        assert_eq!(spec.job.catch_up, CatchUp::None);
        assert_eq!(spec.job.retry.retries, 2);
        assert_eq!(spec.job.retry.backoff, Duration::from_secs(30));
        let defaults = job("schedule = \"@hourly\"").unwrap().job;
        assert_eq!(defaults, JobSpec::default());
        for (extra, named) in [
            ("schedule = \"*/61 * * * *\"", "*/61"),
            ("schedule = \"0 0 30 2 *\"", "never fires"),
            (
                "schedule = \"@hourly\"\ntimezone = \"Mars/Base\"",
                "Mars/Base",
            ),
            (
                "schedule = \"@hourly\"\noverlap = \"sometimes\"",
                "sometimes",
            ),
            ("schedule = \"@hourly\"\ncatch_up = \"all\"", "all"),
            ("schedule = \"@hourly\"\ntimeout = \"soon\"", "soon"),
        ] {
            let error = job(extra).unwrap_err();
            assert!(error.contains(named), "{extra}: {error}");
        }
        let error = parse("name = \"s\"\nkind = \"static\"\ntimezone = \"UTC\"\n").unwrap_err();
        assert!(error.contains("`timezone` is only for"), "{error}");
    }

    #[test]
    fn names_and_limits_are_checked() {
        assert!(parse("name = \"Dash\"\nkind = \"static\"\n")
            .unwrap_err()
            .contains("not a valid app name"));
        let spec = Manifest::parse("name = \"x\"\nkind = \"static\"\n", "f", Some("y")).unwrap();
        assert_eq!(spec.name, "y");
        let spec = parse(
            "name = \"a\"\nkind = \"service\"\ncommand = \"n\"\nport = 1\n[resources]\nmemory = \"64MiB\"\n[scale]\npause_after = \"5s\"\nmax = 3\n",
        )
        .unwrap();
        assert_eq!(spec.resources.memory_bytes, 64 << 20);
        assert_eq!(spec.scale.pause_after, Duration::from_secs(5));
        assert_eq!(spec.scale.max, 3);
        assert!(parse("name = \"a\"\nkind = \"service\"\ncommand = \"n\"\nport = 1\n[scale]\nmin = 4\nmax = 2\n")
            .unwrap_err()
            .contains("min <= max"));
        assert!(parse("name = \"a\"\nkind = \"service\"\ncommand = \"n\"\nport = 1\n[resources]\nmemory = \"lots\"\n")
            .unwrap_err()
            .contains("not a size"));
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("256MiB"), Some(256 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("1.5G"), None);
        assert_eq!(parse_size("99999999999999999999G"), None);
    }
}
