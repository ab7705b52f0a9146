//! Client commands: `shoal deploy`, `shoal apps`, `shoal rm`, `shoal runs`, `shoal run`...,
//! talking to the admin API.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context};
use comfy_table::{presets, Table};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tokio_util::io::ReaderStream;

use crate::api::RunsView;
use crate::bundle::pack_dir;
use crate::cli::{
    AppsArgs, ClientArgs, DeployArgs, LogsArgs, NodesArgs, RmArgs, RunArgs, RunsArgs,
};
use crate::manifest::Manifest;
use crate::runs::{Run, RunState, Tick};
use crate::tokens::admin_token_path;

#[path = "client_policy.rs"]
mod policy;

pub use policy::{policy, share, token};

/// The admin API, as one client sees it.
struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let base = if args.api.contains("://") {
            args.api.trim_end_matches('/').to_owned()
        } else {
            format!("http://{}", args.api.trim_end_matches('/'))
        };
        let token = match &args.token {
            Some(token) => token.clone(),
            None => {
                let path = admin_token_path(&args.data_dir);
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no admin token: pass --token, set SHOAL_TOKEN, or run where {} exists",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self { base, token, http })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends a request and returns its JSON, turning API errors into one clear sentence.
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = self.reach(request).await?;
        let status = response.status();
        let text = response
            .text()
            .await
            .context("the admin API's answer broke off")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"]
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned);
        bail!("{message} (HTTP {})", status.as_u16())
    }

    /// Sends a request whose successful answer is a stream, not JSON.
    async fn open(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = self.reach(request).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        let message = value["error"]
            .as_str()
            .unwrap_or("request failed")
            .to_owned();
        bail!("{message} (HTTP {})", status.as_u16())
    }

    async fn reach(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        request.send().await.map_err(|error| {
            if error.is_connect() || error.is_timeout() {
                anyhow::anyhow!(
                    "cannot reach the admin API at {}: is a shoal node running? (set --api or SHOAL_API)",
                    self.base
                )
            } else {
                anyhow::anyhow!("request to the admin API at {} failed: {error}", self.base)
            }
        })
    }
}

/// `shoal deploy DIR`.
pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let spec = Manifest::load(&args.dir, args.name.as_deref())?;
    let client = ApiClient::new(&args.client)?;
    let packed = pack(&args.dir, args.client.json).await?;
    let size = packed.as_file().metadata()?.len();
    let file = tokio::fs::File::open(packed.path()).await?;
    let bar = progress_bar(size, "upload", args.client.json);
    let upload_bar = bar.clone();
    let stream = ReaderStream::new(file).inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            upload_bar.inc(chunk.len() as u64);
        }
    });
    let mut path = "/v1/apps".to_owned();
    if let Some(name) = &args.name {
        path.push_str(&format!("?name={name}"));
    }
    let request = client
        .request(reqwest::Method::POST, &path)
        .header("content-type", "application/zstd")
        .header("content-length", size)
        .body(reqwest::Body::wrap_stream(stream));
    let result = client.send(request).await;
    bar.finish_and_clear();
    let value = result?;
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let digest = value["digest"].as_str().unwrap_or("");
    let version = &value["version"];
    if value["created"].as_bool() == Some(true) {
        println!(
            "deployed {} release {version} ({}, sha256 {})",
            spec.name,
            spec.kind,
            &digest[..12.min(digest.len())]
        );
    } else {
        println!(
            "{} is unchanged: release {version} already holds this content",
            spec.name
        );
    }
    for url in value["urls"].as_array().into_iter().flatten() {
        println!("  {}", url.as_str().unwrap_or_default());
    }
    Ok(())
}

/// Packs `dir` into a temporary tar.zst, showing progress.
async fn pack(dir: &Path, quiet: bool) -> anyhow::Result<tempfile::NamedTempFile> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let packed = tempfile::Builder::new().suffix(".tar.zst").tempfile()?;
        let bar = progress_bar(0, "pack", quiet);
        let writer = std::io::BufWriter::new(packed.as_file().try_clone()?);
        let summary = pack_dir(&dir, writer, |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .with_context(|| format!("cannot pack {}", dir.display()))?;
        bar.finish_and_clear();
        tracing::debug!(
            files = summary.files,
            bytes = summary.bytes,
            "packed bundle"
        );
        Ok(packed)
    })
    .await?
}

fn progress_bar(total: u64, label: &'static str, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>7} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(label);
    bar
}

/// `shoal apps [NAME]`.
pub async fn apps(args: AppsArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.client)?;
    let path = match &args.name {
        Some(name) => format!("/v1/apps/{name}"),
        None => "/v1/apps".to_owned(),
    };
    let value = client
        .send(client.request(reqwest::Method::GET, &path))
        .await?;
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else if args.name.is_some() {
        print_app(&value);
    } else {
        print_apps(&value);
    }
    Ok(())
}

fn print_apps(value: &Value) {
    let apps = value["apps"].as_array().cloned().unwrap_or_default();
    if apps.is_empty() {
        println!("no apps deployed yet: try `shoal deploy DIR`");
        return;
    }
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header(["NAME", "KIND", "RELEASE", "DEPLOYED", "URL"]);
    for app in &apps {
        table.add_row([
            plain(&app["name"]),
            plain(&app["kind"]),
            plain(&app["version"]),
            plain(&app["deployed_at"]),
            plain(&app["urls"][0]),
        ]);
    }
    println!("{table}");
}

fn print_app(value: &Value) {
    let app = &value["app"];
    println!(
        "{} ({}), release {}",
        plain(&app["name"]),
        plain(&app["kind"]),
        plain(&app["version"])
    );
    for url in app["urls"].as_array().into_iter().flatten() {
        println!("  {}", plain(url));
    }
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header(["RELEASE", "DIGEST", "BYTES", "DEPLOYED"]);
    for release in value["releases"].as_array().into_iter().flatten() {
        let digest = plain(&release["digest"]);
        table.add_row([
            plain(&release["version"]),
            digest[..12.min(digest.len())].to_owned(),
            plain(&release["bundle_bytes"]),
            plain(&release["deployed_at"]),
        ]);
    }
    println!("{table}");
    let instances = value["instances"].as_array().cloned().unwrap_or_default();
    if !instances.is_empty() {
        let mut table = Table::new();
        table.load_preset(presets::NOTHING);
        table.set_header(["INSTANCE", "RELEASE", "STATE", "IN FLIGHT", "LAST FAILURE"]);
        for instance in &instances {
            let container = plain(&instance["container"]);
            table.add_row([
                container[..12.min(container.len())].to_owned(),
                plain(&instance["release"]),
                plain(&instance["state"]),
                plain(&instance["in_flight"]),
                plain(&instance["last_failure"]),
            ]);
        }
        println!("{table}");
    }
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `shoal nodes [--remove ID]`.
pub async fn nodes(args: NodesArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.client)?;
    if let Some(id) = &args.remove {
        let value = client
            .send(client.request(reqwest::Method::DELETE, &format!("/v1/nodes/{id}")))
            .await?;
        if args.client.json {
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else {
            println!("removed node {id} from raft");
        }
        return Ok(());
    }
    let value = client
        .send(client.request(reqwest::Method::GET, "/v1/nodes"))
        .await?;
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header([
        "NAME",
        "ID",
        "ROLE",
        "RAFT",
        "LIVE",
        "APPLIED",
        "IN FLIGHT",
        "INSTANCES",
        "API",
        "QUIC",
    ]);
    for node in value["nodes"].as_array().into_iter().flatten() {
        let role = if node["voter"].as_bool() == Some(true) {
            "voter"
        } else {
            "worker"
        };
        let raft = plain(&node["raft"]);
        table.add_row([
            plain(&node["name"]),
            plain(&node["id"]),
            role.to_owned(),
            if raft == "leader" {
                "LEADER".to_owned()
            } else {
                raft
            },
            if node["live"].as_bool() == Some(true) {
                "yes".to_owned()
            } else {
                "DEAD".to_owned()
            },
            plain(&node["applied_index"]),
            plain(&node["load"]["in_flight"]),
            plain(&node["load"]["instances"]),
            plain(&node["api"]),
            plain(&node["quic"]),
        ]);
    }
    println!("{table}");
    match value["leader"].as_str() {
        Some(leader) => println!("leader: node {leader}, term {}", plain(&value["term"])),
        None => println!("no leader known: a majority of voters must be up"),
    }
    Ok(())
}

/// `shoal rm NAME`.
pub async fn rm(args: RmArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.client)?;
    let value = client
        .send(client.request(reqwest::Method::DELETE, &format!("/v1/apps/{}", args.name)))
        .await?;
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("deleted {}", args.name);
    }
    Ok(())
}

/// `shoal logs NAME [-f]`.
pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let client = ApiClient::new(&args.client)?;
    let path = format!(
        "/v1/apps/{}/logs?tail={}&follow={}",
        args.name, args.tail, args.follow
    );
    let mut response = client
        .open(client.request(reqwest::Method::GET, &path))
        .await?;
    let mut stdout = std::io::stdout();
    while let Some(chunk) = response.chunk().await.context("the log stream broke off")? {
        if stdout
            .write_all(&chunk)
            .and_then(|()| stdout.flush())
            .is_err()
        {
            break;
        }
    }
    Ok(())
}

/// `shoal runs NAME`.
pub async fn runs(args: RunsArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.client)?;
    let path = format!("/v1/apps/{}/runs", args.name);
    let value = client
        .send(client.request(reqwest::Method::GET, &path))
        .await?;
    if args.client.json {
        return print_stdout(&format!("{}\n", serde_json::to_string_pretty(&value)?));
    }
    let view: RunsView = serde_json::from_value(value).context(
        "the admin API's list of runs is not in a form this shoal reads: are the client and the node the same version?",
    )?;
    print_stdout(&render_runs(&view))
}

/// `shoal run NAME`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.client)?;
    let path = format!("/v1/apps/{}/runs", args.name);
    let value = client
        .send(client.request(reqwest::Method::POST, &path))
        .await?;
    let text = if args.client.json {
        format!("{}\n", serde_json::to_string_pretty(&value)?)
    } else {
        format!("started run {} of {}\n", plain(&value["run_id"]), args.name)
    };
    print_stdout(&text)
}

/// Prints `text`; a reader that went away (`shoal runs job | head`) is not an error.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("cannot write to standard output")
        }
        _ => Ok(()),
    }
}

/// `shoal runs` as text: a table, newest run first, or a sentence when there are none.
pub(crate) fn render_runs(view: &RunsView) -> String {
    if view.runs.is_empty() {
        return format!(
            "no runs of {job} yet: they appear at its schedule's ticks, or start one with `shoal run {job}`\n",
            job = view.job
        );
    }
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header([
        "RUN", "TICK", "STATE", "ATTEMPT", "WORKER", "EXIT", "DURATION", "REASON",
    ]);
    for run in &view.runs {
        table.add_row([
            run.run_id.clone(),
            format_tick(run.tick),
            state_name(run.state).to_owned(),
            run.attempt.to_string(),
            run.worker
                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
            run.exit_code
                .map_or_else(|| "-".to_owned(), |code| code.to_string()),
            run_duration(run),
            run.reason
                .as_deref()
                .map(|reason| reason.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
        ]);
    }
    format!("{table}\n")
}

/// As in the API's JSON.
fn state_name(state: RunState) -> &'static str {
    match state {
        RunState::Pending => "pending",
        RunState::Running => "running",
        RunState::Succeeded => "succeeded",
        RunState::Failed => "failed",
        RunState::TimedOut => "timed_out",
        RunState::Lost => "lost",
        RunState::Skipped => "skipped",
        RunState::Replaced => "replaced",
    }
}

/// A tick in UTC, RFC 3339 to the second; the bare number if it is outside years 1970-9999.
fn format_tick(tick: Tick) -> String {
    const YEAR_10000: u64 = 253_402_300_800;
    match u64::try_from(tick) {
        Ok(seconds) if seconds < YEAR_10000 => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds)).to_string()
        }
        _ => tick.to_string(),
    }
}

/// From start to finish, or `-` for a run that has not both started and finished.
fn run_duration(run: &Run) -> String {
    match (run.started_at_ms, run.finished_at_ms) {
        (Some(started), Some(finished)) => format_duration_ms(finished.saturating_sub(started)),
        _ => "-".to_owned(),
    }
}

/// `1.2s` under a minute, `2m05s` under an hour, `1h02m` beyond.
fn format_duration_ms(ms: u64) -> String {
    let tenths = (ms + 50) / 100;
    if tenths < 600 {
        return format!("{}.{}s", tenths / 10, tenths % 10);
    }
    let seconds = (ms + 500) / 1000;
    if seconds < 3600 {
        return format!("{}m{:02}s", seconds / 60, seconds % 60);
    }
    let minutes = (ms + 30_000) / 60_000;
    format!("{}h{:02}m", minutes / 60, minutes % 60)
}

/// `shoal runtime build`.
pub async fn runtime_build(json: bool) -> anyhow::Result<()> {
    let docker = crate::runtime::image::connect_docker().await?;
    eprintln!("building the shoal-runtime image from this host's files...");
    let image = crate::runtime::image::build_runtime_image(&docker).await?;
    if json {
        let value = serde_json::json!({
            "image": image.reference,
            "content_hash": image.content_hash,
            "python": image.has_python,
        });
        println!("{value}");
    } else {
        let python = if image.has_python { "yes" } else { "no" };
        println!("built {} (python: {python})", image.reference);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::Fence;

    /// 2026-11-24T19:20:00Z.
    const TICK: Tick = 1_795_548_000;

    fn run(run_id: &str, tick: Tick, state: RunState) -> Run {
        Run {
            run_id: run_id.into(),
            tick,
            attempt: 0,
            manual: false,
            fence: Fence { term: 1, index: 4 },
            state,
            worker: None,
            release: 1,
            fired_at_ms: 0,
            started_at_ms: None,
            finished_at_ms: None,
            exit_code: None,
            log_tail: String::new(),
            reason: None,
        }
    }

    #[test]
    fn ticks_print_in_utc_to_the_second() {
        assert_eq!(format_tick(TICK), "2026-11-24T19:20:00Z");
        assert_eq!(format_tick(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_tick(-1), "-1", "no panic before the epoch");
        assert_eq!(format_tick(Tick::MAX), Tick::MAX.to_string());
    }

    #[test]
    fn durations_read_at_a_glance() {
        let cases = [
            (0, "0.0s"),
            (1_200, "1.2s"),
            (1_249, "1.2s"),
            (59_940, "59.9s"),
            (59_950, "1m00s"),
            (125_000, "2m05s"),
            (3_599_400, "59m59s"),
            (3_599_600, "1h00m"),
            (3_723_000, "1h02m"),
        ];
        for (ms, text) in cases {
            assert_eq!(format_duration_ms(ms), text, "{ms} ms");
        }
    }

    #[test]
    fn runs_print_as_a_table_newest_first() {
        let finished = Run {
            worker: Some(3),
            started_at_ms: Some(10_000),
            finished_at_ms: Some(11_200),
            exit_code: Some(0),
            ..run("1795551600", TICK + 3600, RunState::Succeeded)
        };
        let failed = Run {
            attempt: 1,
            worker: Some(12),
            started_at_ms: Some(1_000),
            finished_at_ms: Some(126_000),
            exit_code: Some(2),
            ..run("1795548000.1", TICK, RunState::Failed)
        };
        let skipped = Run {
            finished_at_ms: Some(5),
            reason: Some("the previous run\nwas still going".into()),
            ..run("1795544400", TICK - 3600, RunState::Skipped)
        };
        let manual = Run {
            manual: true,
            ..run("m1795552000456", TICK + 4000, RunState::Pending)
        };
        let view = RunsView {
            job: "report".into(),
            last_tick: Some(TICK + 3600),
            runs: vec![manual, finished, failed, skipped],
        };
        let text = render_runs(&view);
        let lines: Vec<_> = text.lines().map(str::trim_end).collect();
        assert_eq!(
            lines,
            [
                " RUN             TICK                  STATE      ATTEMPT  WORKER  EXIT  DURATION  REASON",
                " m1795552000456  2026-11-24T20:26:40Z  pending    0        -       -     -",
                " 1795551600      2026-11-24T20:20:00Z  succeeded  0        3       0     1.2s",
                " 1795548000.1    2026-11-24T19:20:00Z  failed     1        12      2     2m05s",
                " 1795544400      2026-11-24T18:20:00Z  skipped    0        -       -     -         the previous run was still going",
            ]
        );
    }

    #[test]
    fn no_runs_is_a_sentence() {
        let view = RunsView {
            job: "report".into(),
            last_tick: None,
            runs: Vec::new(),
        };
        assert_eq!(
            render_runs(&view),
            "no runs of report yet: they appear at its schedule's ticks, or start one with `shoal run report`\n"
        );
    }
}
