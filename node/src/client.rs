//! Client commands: `shoal deploy`, `shoal apps`, `shoal rm`, talking to the admin API.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use comfy_table::{presets, Table};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tokio_util::io::ReaderStream;

use crate::bundle::pack_dir;
use crate::cli::{AppsArgs, ClientArgs, DeployArgs, LogsArgs, NodesArgs, RmArgs};
use crate::manifest::Manifest;
use crate::tokens::admin_token_path;

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
