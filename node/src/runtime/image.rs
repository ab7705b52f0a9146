//! The shared `shoal-runtime` image every backend app and job runs in (DESIGN.md §5).
//!
//! It holds Node.js (and Python 3 when the host has a usable one), no shell, no package manager,
//! and runs as uid 65534. No registry is needed: the image is built `FROM scratch` through the
//! Docker API from an in-memory build context made of the host's own files: the `node` binary,
//! the ELF interpreter and shared libraries it links (found through its `PT_INTERP` header and
//! `ldd`), a minimal `/etc/passwd` and `/etc/group`, empty `/tmp` and `/app`, and the CA bundle.
//! Symlinks on the host are followed: the image holds real files at the paths the loader asks
//! for.
//!
//! The context is content-addressed: a sha256 over every entry's path, kind, mode and content
//! names the image (`shoal-runtime:<first 12 hex>`, label [`HASH_LABEL`]), so a changed host
//! binary yields a new image and an unchanged host reuses the one it has.
//!
//! Layout: planning the context (which host file goes where) is apart from rendering it (hash
//! and tar), which is apart from talking to Docker.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bollard::errors::Error as DockerError;
use bollard::models::BuildInfo;
use bollard::query_parameters::{BuildImageOptionsBuilder, TagImageOptionsBuilder};
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::RuntimeError;

/// Repository name of the runtime image.
pub const IMAGE_REPOSITORY: &str = "shoal-runtime";
/// Image label carrying the full content hash of the build context.
pub const HASH_LABEL: &str = "io.shoal.runtime.hash";
/// Where the app's release is mounted inside the image (its working directory).
pub const APP_DIR: &str = "/app";
/// The user (and group) every container runs as: `nobody`.
pub const RUNTIME_UID: u32 = 65534;

/// Where Node.js is looked for on the host, in order; it lands at `/usr/bin/node` in the image.
const NODE_CANDIDATES: &[&str] = &["/usr/bin/node", "/usr/local/bin/node"];
const NODE_IMAGE_PATH: &str = "/usr/bin/node";
const PYTHON_PATH: &str = "/usr/bin/python3";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Stdlib directories left out of the image: tests, GUI, installers, bytecode caches and
/// third-party packages (apps vendor their own dependencies in the release).
const PYTHON_SKIPPED_DIRS: &str = "__pycache__ test tests idle_test idlelib tkinter turtledemo \
    ensurepip lib2to3 distutils site-packages dist-packages";
/// Every entry gets the same mtime so the context (and Docker's build cache) is reproducible.
const ENTRY_MTIME: u64 = 315_532_800;
/// Sending ~150 MB of context and committing the layer can exceed bollard's 2-minute default.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// One build at a time per process: concurrent callers wait and then reuse the image.
static BUILD_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The image every app container runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeImage {
    /// `shoal-runtime:<first 12 hex of the content hash>`.
    pub reference: String,
    /// sha256 (hex) over the build context's entries.
    pub content_hash: String,
    /// Whether `/usr/bin/python3` is in the image.
    pub has_python: bool,
}

/// A rendered build context: a tar holding `Dockerfile` and `rootfs/`.
pub struct BuildContext {
    /// The uncompressed tar, ready to send as the build body.
    pub tar: Vec<u8>,
    /// sha256 (hex) over the context's entries (paths, modes, contents).
    pub content_hash: String,
    /// Whether Python 3 was included.
    pub has_python: bool,
}

impl fmt::Debug for BuildContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildContext")
            .field("tar_bytes", &self.tar.len())
            .field("content_hash", &self.content_hash)
            .field("has_python", &self.has_python)
            .finish()
    }
}

/// Connects to the local Docker engine (unix socket, DOCKER_HOST honoured), negotiating the API version.
pub async fn connect_docker() -> Result<Docker, RuntimeError> {
    let unreachable = |err: DockerError| {
        RuntimeError::Unavailable(format!("{err} (is Docker running, is DOCKER_HOST right?)"))
    };
    let docker = Docker::connect_with_defaults().map_err(unreachable)?;
    docker.negotiate_version().await.map_err(unreachable)
}

/// Builds the context from the host's files (blocking I/O: runs it in spawn_blocking internally).
pub async fn build_context() -> Result<BuildContext, RuntimeError> {
    run_blocking(|| render_build_context(&plan_context()?)).await
}

/// The image for the current host files: reused if an image with that hash exists, built otherwise.
pub async fn ensure_runtime_image(docker: &Docker) -> Result<RuntimeImage, RuntimeError> {
    ensure_with_outcome(docker)
        .await
        .map(|(image, _built)| image)
}

/// Builds it even if present (`shoal runtime build`).
pub async fn build_runtime_image(docker: &Docker) -> Result<RuntimeImage, RuntimeError> {
    let _build = BUILD_LOCK.lock().await;
    let context = build_context().await?;
    build_from_context(docker, context, true).await
}

/// [`ensure_runtime_image`], also saying whether it had to build (`true`) or reused an image.
pub(crate) async fn ensure_with_outcome(
    docker: &Docker,
) -> Result<(RuntimeImage, bool), RuntimeError> {
    let _build = BUILD_LOCK.lock().await;
    let (plan, content_hash) = run_blocking(|| {
        let plan = plan_context()?;
        let (content_hash, _) = render_context(&plan, false)?;
        Ok((plan, content_hash))
    })
    .await?;
    let reference = reference_for(&content_hash);
    if has_image(docker, &reference, &content_hash).await? {
        tag_latest(docker, &reference).await?;
        debug!(reference = %reference, "runtime image reused");
        let has_python = plan.has_python;
        return Ok((
            RuntimeImage {
                reference,
                content_hash,
                has_python,
            },
            false,
        ));
    }
    let context = run_blocking(move || render_build_context(&plan)).await?;
    Ok((build_from_context(docker, context, false).await?, true))
}

/// `shoal-runtime:<first 12 hex>`.
fn reference_for(content_hash: &str) -> String {
    format!("{IMAGE_REPOSITORY}:{}", &content_hash[..12])
}

async fn run_blocking<T, F>(work: F) -> Result<T, RuntimeError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, RuntimeError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| image_error(format!("the context builder task failed: {err}")))?
}

/// Whether the image tagged `reference` exists and carries `content_hash`.
async fn has_image(
    docker: &Docker,
    reference: &str,
    content_hash: &str,
) -> Result<bool, RuntimeError> {
    let inspect = match docker.inspect_image(reference).await {
        Ok(inspect) => inspect,
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => return Ok(false),
        Err(err) => return Err(image_error(format!("cannot inspect {reference}: {err}"))),
    };
    let labels = inspect.config.and_then(|config| config.labels);
    let found = labels.as_ref().and_then(|labels| labels.get(HASH_LABEL));
    if found.map(String::as_str) != Some(content_hash) {
        warn!(reference = %reference, "runtime image tag carries another hash; rebuilding");
        return Ok(false);
    }
    Ok(true)
}

fn image_error(message: String) -> RuntimeError {
    RuntimeError::Image(message)
}

async fn tag_latest(docker: &Docker, reference: &str) -> Result<(), RuntimeError> {
    let options = TagImageOptionsBuilder::new()
        .repo(IMAGE_REPOSITORY)
        .tag("latest")
        .build();
    docker
        .tag_image(reference, Some(options))
        .await
        .map_err(|err| image_error(format!("cannot tag {reference} as latest: {err}")))
}

/// Sends `context` to the engine's (classic) builder, streaming its output into the log.
async fn build_from_context(
    docker: &Docker,
    context: BuildContext,
    no_cache: bool,
) -> Result<RuntimeImage, RuntimeError> {
    let started = Instant::now();
    let reference = reference_for(&context.content_hash);
    let labels = HashMap::from([(HASH_LABEL, context.content_hash.as_str())]);
    let options = BuildImageOptionsBuilder::new()
        .dockerfile("Dockerfile")
        .t(&reference)
        .labels(&labels)
        .nocache(no_cache)
        .rm(true)
        .forcerm(true)
        .build();
    let context_bytes = context.tar.len();
    let body = bollard::body_full(Bytes::from(context.tar));
    let docker_for_build = docker.clone().with_timeout(BUILD_TIMEOUT);
    let mut output = docker_for_build.build_image(options, None, Some(body));
    while let Some(message) = output.next().await {
        check_build_message(message)?;
    }
    if !has_image(docker, &reference, &context.content_hash).await? {
        return Err(image_error(format!(
            "the build finished without {reference}"
        )));
    }
    tag_latest(docker, &reference).await?;
    info!(
        reference = %reference,
        context_bytes,
        has_python = context.has_python,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "runtime image built"
    );
    let (content_hash, has_python) = (context.content_hash, context.has_python);
    Ok(RuntimeImage {
        reference,
        content_hash,
        has_python,
    })
}

/// Logs one message of the build output, or turns an error message into the error.
fn check_build_message(message: Result<BuildInfo, DockerError>) -> Result<(), RuntimeError> {
    let info = match message {
        Ok(info) => info,
        Err(DockerError::DockerStreamError { error }) => {
            return Err(image_error(format!("the build failed: {error}")));
        }
        Err(err) => {
            return Err(image_error(format!("the build request failed: {err}")));
        }
    };
    if let Some(detail) = info.error_detail {
        let message = detail
            .message
            .unwrap_or_else(|| "no detail given".to_string());
        return Err(image_error(format!("the build failed: {message}")));
    }
    let line = info
        .stream
        .as_deref()
        .map(str::trim_end)
        .unwrap_or_default();
    if !line.is_empty() {
        debug!(line, "runtime image build");
    }
    Ok(())
}

/// Where an entry's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum EntrySource {
    /// A directory.
    Dir,
    /// Generated content (`/etc/passwd`, the Dockerfile).
    Bytes(Vec<u8>),
    /// A host file, read (through any symlinks) when the context is rendered.
    HostFile(PathBuf),
}

/// One entry of the build context.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ContextEntry {
    mode: u32,
    source: EntrySource,
}

/// What goes into the context, keyed (and ordered) by path inside the tar.
#[derive(Clone, Debug, Default)]
struct ContextPlan {
    entries: BTreeMap<String, ContextEntry>,
    /// Directories the linked libraries live in (the image's `LD_LIBRARY_PATH`: there is no
    /// `ld.so.cache` in the image to find them otherwise).
    library_dirs: BTreeSet<String>,
    has_python: bool,
    has_ca_bundle: bool,
}

impl ContextPlan {
    fn insert(&mut self, tar_path: String, mode: u32, source: EntrySource) {
        let parents = Path::new(&tar_path).ancestors().skip(1);
        for dir in parents.filter(|dir| !dir.as_os_str().is_empty()) {
            let dir = dir.to_string_lossy().into_owned();
            let parent = ContextEntry {
                mode: 0o755,
                source: EntrySource::Dir,
            };
            self.entries.entry(dir).or_insert(parent);
        }
        self.entries.insert(tar_path, ContextEntry { mode, source });
    }

    /// Adds a directory at `image_path` (absolute, inside the image).
    fn add_dir(&mut self, image_path: &str, mode: u32) {
        self.insert(rootfs_path(image_path), mode, EntrySource::Dir);
    }

    /// Adds generated content at `image_path`.
    fn add_bytes(&mut self, image_path: &str, mode: u32, bytes: impl Into<Vec<u8>>) {
        self.insert(
            rootfs_path(image_path),
            mode,
            EntrySource::Bytes(bytes.into()),
        );
    }

    /// Adds the host file `host` (symlinks followed) at `image_path`: 0755 if it is
    /// executable on the host, 0644 otherwise.
    fn add_host_file(&mut self, image_path: &str, host: &Path) -> Result<(), RuntimeError> {
        let metadata = fs::metadata(host).map_err(|err| read_error(host, err))?;
        if !metadata.is_file() {
            let message = format!("{} is not a regular file", host.display());
            return Err(RuntimeError::Image(message));
        }
        let mode = if metadata.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        let source = EntrySource::HostFile(host.to_path_buf());
        self.insert(rootfs_path(image_path), mode, source);
        Ok(())
    }

    fn merge(&mut self, other: ContextPlan) {
        for (path, entry) in other.entries {
            self.entries.entry(path).or_insert(entry);
        }
        self.library_dirs.extend(other.library_dirs);
    }
}

fn rootfs_path(image_path: &str) -> String {
    format!("rootfs/{}", image_path.trim_start_matches('/'))
}

fn read_error(path: &Path, err: io::Error) -> RuntimeError {
    image_error(format!("cannot read {}: {err}", path.display()))
}

/// Decides the whole context from the host's files (blocking).
fn plan_context() -> Result<ContextPlan, RuntimeError> {
    let mut plan = ContextPlan::default();
    add_base_files(&mut plan);
    let node = find_node()?;
    plan.add_host_file(NODE_IMAGE_PATH, &node)?;
    add_linked_libraries(&mut plan, &node, true)?;
    if Path::new(CA_BUNDLE).is_file() {
        plan.add_host_file(CA_BUNDLE, Path::new(CA_BUNDLE))?;
        plan.has_ca_bundle = true;
    }
    let mut python = ContextPlan::default();
    match add_python(&mut python, Path::new(PYTHON_PATH)) {
        Ok(true) => {
            plan.merge(python);
            plan.has_python = true;
        }
        Ok(false) => {}
        Err(err) => info!(error = %err, "python left out of the runtime image"),
    }
    let dockerfile = render_dockerfile(&plan);
    plan.insert(
        "Dockerfile".into(),
        0o644,
        EntrySource::Bytes(dockerfile.into()),
    );
    Ok(plan)
}

/// Users, name resolution and the empty directories every container expects.
fn add_base_files(plan: &mut ContextPlan) {
    let passwd = format!(
        "root:x:0:0:root:/root:/sbin/nologin\n\
         nobody:x:{RUNTIME_UID}:{RUNTIME_UID}:nobody:/nonexistent:/sbin/nologin\n"
    );
    let group = format!("root:x:0:\nnobody:x:{RUNTIME_UID}:\n");
    plan.add_bytes("/etc/passwd", 0o644, passwd);
    plan.add_bytes("/etc/group", 0o644, group);
    let nsswitch = "passwd: files\ngroup: files\nhosts: files dns\n";
    plan.add_bytes("/etc/nsswitch.conf", 0o644, nsswitch);
    plan.add_dir("/tmp", 0o1777);
    plan.add_dir(APP_DIR, 0o755);
}

fn find_node() -> Result<PathBuf, RuntimeError> {
    let node = NODE_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .ok_or_else(|| {
            image_error(format!(
                "Node.js is not installed on this host (looked for {}); install it, the \
                 runtime image is built from it",
                NODE_CANDIDATES.join(", ")
            ))
        })?;
    fs::canonicalize(&node).map_err(|err| read_error(&node, err))
}

/// Adds the ELF interpreter and every shared library `binary` links, each at the path the
/// loader asks for. A library `ldd` cannot find is an error when `required`, skipped otherwise
/// (an optional Python extension module then fails to import, nothing more).
fn add_linked_libraries(
    plan: &mut ContextPlan,
    binary: &Path,
    required: bool,
) -> Result<(), RuntimeError> {
    let mut file = File::open(binary).map_err(|err| read_error(binary, err))?;
    let interpreter = read_elf_interpreter(&mut file).map_err(|err| read_error(binary, err))?;
    if let Some(interpreter) = interpreter {
        plan.add_host_file(&interpreter.to_string_lossy(), &interpreter)?;
    }
    for library in run_ldd(binary)? {
        match library {
            LinkedLibrary::Found { path, .. } => {
                plan.add_host_file(&path.to_string_lossy(), &path)?;
                if let Some(dir) = path.parent() {
                    plan.library_dirs.insert(dir.to_string_lossy().into_owned());
                }
            }
            LinkedLibrary::Missing { name } if required => {
                return Err(image_error(format!(
                    "{} links {name}, which is not installed on this host",
                    binary.display()
                )));
            }
            LinkedLibrary::Missing { name } => {
                debug!(binary = %binary.display(), library = %name, "linked library not found");
            }
        }
    }
    Ok(())
}

/// One line of `ldd` output.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LinkedLibrary {
    /// Resolved to a file.
    Found { name: String, path: PathBuf },
    /// `name => not found`.
    Missing { name: String },
}

fn run_ldd(binary: &Path) -> Result<Vec<LinkedLibrary>, RuntimeError> {
    let output = Command::new("ldd")
        .arg(binary)
        .env("LC_ALL", "C")
        .output()
        .map_err(|err| {
            image_error(format!(
                "cannot run ldd (glibc's, needed to find libraries): {err}"
            ))
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let is_static = |text: &str| {
        text.contains("not a dynamic executable") || text.contains("statically linked")
    };
    if !output.status.success() && !is_static(&stdout) && !is_static(&stderr) {
        let message = format!("ldd {} failed: {}", binary.display(), stderr.trim());
        return Err(RuntimeError::Image(message));
    }
    Ok(parse_ldd_output(&stdout))
}

/// Parses `ldd` output: `name => /path (0x..)`, `/abs/loader (0x..)`, `name => not found`.
/// The vDSO and "statically linked" lines have no file and are skipped.
fn parse_ldd_output(text: &str) -> Vec<LinkedLibrary> {
    let strip_address = |rest: &str| -> String {
        let end = rest.rfind(" (0x").unwrap_or(rest.len());
        rest[..end].trim().to_string()
    };
    let mut libraries = Vec::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        if let Some((name, rest)) = line.split_once("=>") {
            let (name, rest) = (name.trim().to_string(), rest.trim());
            if rest.starts_with("not found") {
                libraries.push(LinkedLibrary::Missing { name });
                continue;
            }
            let path = strip_address(rest);
            if path.starts_with('/') {
                libraries.push(LinkedLibrary::Found {
                    name,
                    path: PathBuf::from(path),
                });
            }
        } else if line.starts_with('/') {
            let path = strip_address(line);
            libraries.push(LinkedLibrary::Found {
                name: path.clone(),
                path: PathBuf::from(path),
            });
        }
    }
    libraries
}

/// The `PT_INTERP` path of an ELF file (`None` for static binaries and shared libraries);
/// an error if it is not ELF at all.
fn read_elf_interpreter(file: &mut (impl Read + Seek)) -> io::Result<Option<PathBuf>> {
    const PT_INTERP: u64 = 3;
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut header = [0u8; 64];
    file.read_exact(&mut header[..52])
        .map_err(|_| invalid("not an ELF file"))?;
    if &header[..4] != b"\x7fELF" {
        return Err(invalid("not an ELF file"));
    }
    let (wide, big_endian) = (header[4] == 2, header[5] == 2);
    if wide {
        file.read_exact(&mut header[52..])?;
    }
    let uint = |bytes: &[u8]| read_uint(bytes, big_endian);
    let (phoff, phentsize, phnum) = if wide {
        (
            uint(&header[0x20..0x28]),
            uint(&header[0x36..0x38]),
            uint(&header[0x38..0x3a]),
        )
    } else {
        (
            uint(&header[0x1c..0x20]),
            uint(&header[0x2a..0x2c]),
            uint(&header[0x2c..0x2e]),
        )
    };
    if phnum > 4096 || !(32..=256).contains(&phentsize) {
        return Err(invalid("implausible ELF program headers"));
    }
    let mut headers = vec![0u8; (phnum * phentsize) as usize];
    file.seek(SeekFrom::Start(phoff))?;
    file.read_exact(&mut headers)?;
    for entry in headers.chunks(phentsize as usize) {
        if uint(&entry[..4]) != PT_INTERP {
            continue;
        }
        let (offset, size) = if wide {
            (uint(&entry[0x08..0x10]), uint(&entry[0x20..0x28]))
        } else {
            (uint(&entry[0x04..0x08]), uint(&entry[0x10..0x14]))
        };
        let mut path = vec![0u8; size.min(4096) as usize];
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut path)?;
        let end = path
            .iter()
            .position(|byte| *byte == 0)
            .unwrap_or(path.len());
        let path = String::from_utf8_lossy(&path[..end]).into_owned();
        return Ok(Some(PathBuf::from(path)).filter(|path| path.is_absolute()));
    }
    Ok(None)
}

fn read_uint(bytes: &[u8], big_endian: bool) -> u64 {
    let fold = |value: u64, byte: &u8| (value << 8) | u64::from(*byte);
    if big_endian {
        bytes.iter().fold(0, fold)
    } else {
        bytes.iter().rev().fold(0, fold)
    }
}

/// Adds `python` (the host's `python3`), its libraries and its stdlib, if the host has a
/// usable one with a stdlib directory. `Ok(false)` when there is none.
fn add_python(plan: &mut ContextPlan, python: &Path) -> Result<bool, RuntimeError> {
    if !python.exists() {
        info!(path = %python.display(), "python not installed; runtime image without python");
        return Ok(false);
    }
    let Some(version) = python_version(python) else {
        info!(path = %python.display(), "python does not run; runtime image without python");
        return Ok(false);
    };
    let stdlib = PathBuf::from(format!("/usr/lib/python{version}"));
    if !stdlib.join("os.py").is_file() {
        info!(stdlib = %stdlib.display(), "python stdlib not found; runtime image without python");
        return Ok(false);
    }
    let interpreter = fs::canonicalize(python).map_err(|err| read_error(python, err))?;
    plan.add_host_file(&python.to_string_lossy(), &interpreter)?;
    add_linked_libraries(plan, &interpreter, true)?;
    add_python_stdlib(plan, &stdlib)?;
    Ok(true)
}

/// `"3.11"` from running the interpreter, or `None` if it does not run.
fn python_version(python: &Path) -> Option<String> {
    let script = "import sys; print('%d.%d' % sys.version_info[:2])";
    let output = Command::new(python)
        .args(["-I", "-S", "-c", script])
        .output()
        .ok()?;
    let version = String::from_utf8(output.stdout).ok()?.trim().to_string();
    let well_formed = version.split('.').count() == 2
        && version
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    (output.status.success() && well_formed).then_some(version)
}

/// Copies the stdlib under its own path, minus [`PYTHON_SKIPPED_DIRS`] and the static build
/// files (`config-*`), pulling in the libraries its extension modules link.
fn add_python_stdlib(plan: &mut ContextPlan, stdlib: &Path) -> Result<(), RuntimeError> {
    let walker = walkdir::WalkDir::new(stdlib)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|entry| {
            let name = entry.file_name().to_string_lossy();
            let skipped = PYTHON_SKIPPED_DIRS
                .split_whitespace()
                .any(|dir| dir == name)
                || name.starts_with("config-");
            entry.depth() == 0 || !(entry.file_type().is_dir() && skipped)
        });
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                debug!(error = %err, "python stdlib entry skipped");
                continue;
            }
        };
        if !entry.file_type().is_file() {
            continue;
        }
        let path = entry.path();
        plan.add_host_file(&path.to_string_lossy(), path)?;
        let is_extension = path.extension().is_some_and(|ext| ext == "so");
        if is_extension {
            // An extension module whose libraries cannot be found only fails to import.
            if let Err(err) = add_linked_libraries(plan, path, false) {
                debug!(module = %path.display(), error = %err, "extension module libraries skipped");
            }
        }
    }
    Ok(())
}

/// The context's Dockerfile: scratch, the rootfs, a non-root user, no shell anywhere.
fn render_dockerfile(plan: &ContextPlan) -> String {
    let mut lines = vec![
        "# Generated by shoal: the shared runtime image. No shell, no package manager.".to_string(),
        "FROM scratch".to_string(),
        "COPY rootfs/ /".to_string(),
        "ENV PATH=/usr/local/bin:/usr/bin:/bin NODE_ENV=production".to_string(),
    ];
    if !plan.library_dirs.is_empty() {
        let dirs: Vec<&str> = plan.library_dirs.iter().map(String::as_str).collect();
        lines.push(format!("ENV LD_LIBRARY_PATH={}", dirs.join(":")));
    }
    if plan.has_ca_bundle {
        lines.push(format!("ENV SSL_CERT_FILE={CA_BUNDLE}"));
    }
    if plan.has_python {
        lines.push("ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1".to_string());
    }
    lines.push(format!("USER {RUNTIME_UID}:{RUNTIME_UID}"));
    lines.push(format!("WORKDIR {APP_DIR}"));
    lines.push(format!("CMD [\"{NODE_IMAGE_PATH}\"]"));
    lines.join("\n") + "\n"
}

fn render_build_context(plan: &ContextPlan) -> Result<BuildContext, RuntimeError> {
    let (content_hash, tar) = render_context(plan, true)?;
    let tar = tar.unwrap_or_default();
    Ok(BuildContext {
        tar,
        content_hash,
        has_python: plan.has_python,
    })
}

/// Hashes every entry in order and, if `with_tar`, writes the tar too, reading each host file
/// once. The hash covers path, kind, mode and content, not the tar encoding.
fn render_context(
    plan: &ContextPlan,
    with_tar: bool,
) -> Result<(String, Option<Vec<u8>>), RuntimeError> {
    let mut hasher = Sha256::new();
    let mut builder = with_tar.then(|| tar::Builder::new(Vec::new()));
    for (path, entry) in &plan.entries {
        render_entry(path, entry, &mut hasher, builder.as_mut())?;
    }
    let tar = match builder {
        Some(builder) => Some(
            builder
                .into_inner()
                .map_err(|err| image_error(format!("cannot write the context: {err}")))?,
        ),
        None => None,
    };
    Ok((hex::encode(hasher.finalize()), tar))
}

fn render_entry(
    path: &str,
    entry: &ContextEntry,
    hasher: &mut Sha256,
    builder: Option<&mut tar::Builder<Vec<u8>>>,
) -> Result<(), RuntimeError> {
    let (kind, size, reader): (u8, u64, Box<dyn Read>) = match &entry.source {
        EntrySource::Dir => (b'd', 0, Box::new(io::empty())),
        EntrySource::Bytes(bytes) => (b'f', bytes.len() as u64, Box::new(bytes.as_slice())),
        EntrySource::HostFile(host) => {
            let file = File::open(host).map_err(|err| read_error(host, err))?;
            let size = file.metadata().map_err(|err| read_error(host, err))?.len();
            (b'f', size, Box::new(file))
        }
    };
    hasher.update(path.as_bytes());
    hasher.update([0, kind]);
    hasher.update(entry.mode.to_le_bytes());
    hasher.update(size.to_le_bytes());
    let mut hashing = HashingReader {
        inner: reader.take(size),
        hasher,
        count: 0,
    };
    let written = match builder {
        Some(builder) => {
            let mut header = tar_header(kind == b'd', size, entry.mode);
            builder
                .append_data(&mut header, path, &mut hashing)
                .map(|()| hashing.count)
        }
        None => io::copy(&mut hashing, &mut io::sink()),
    };
    let written = written.map_err(|err| image_error(format!("cannot add {path}: {err}")))?;
    if written != size {
        let message = format!("{path} changed while the context was being built; retry");
        return Err(RuntimeError::Image(message));
    }
    Ok(())
}

/// A GNU header (long paths) owned by root, with the fixed mtime.
fn tar_header(is_dir: bool, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    let entry_type = if is_dir {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    };
    header.set_entry_type(entry_type);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(ENTRY_MTIME);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// Feeds everything read through it into the content hash.
struct HashingReader<'a, R> {
    inner: R,
    hasher: &'a mut Sha256,
    count: u64,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        self.count += read as u64;
        Ok(read)
    }
}

#[cfg(test)]
#[path = "image_tests.rs"]
mod tests;
