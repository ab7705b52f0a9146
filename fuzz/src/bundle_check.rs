//! What must hold whatever bytes are uploaded as a bundle, checked through the node's public
//! path: [`BundleStore::stage`], [`BundleStore::unpack`], then [`BundleStore::commit`] and
//! [`BundleStore::remove`] for an accepted bundle.
//!
//! Shared by the fuzz targets (fuzz/fuzz_targets/bundle_*.rs) and the replay test
//! (node/tests/fuzz_regressions.rs), so it uses only crates both have.
//!
//! Invariants:
//! - a refusal is a clean client error: not an I/O failure of the node, one line, no control
//!   characters, bounded length;
//! - nothing is written outside the unpack directory (the whole sandbox around the store is
//!   walked), and a refused bundle leaves nothing behind;
//! - an accepted tree holds only directories, files (mode 0644 or 0755) and symlinks that
//!   resolve inside it, no hard link to anything outside it, within the limits, and matches the
//!   counts the store reports;
//! - an accepted bundle commits read-only and removes without a trace.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use bytes::Bytes;
use shoal::bundle::{BundleError, BundleLimits, BundleStore, StagedBundle};

/// Small limits, so the fuzzer reaches every limit with small inputs.
pub fn fuzz_limits() -> BundleLimits {
    BundleLimits {
        max_compressed_bytes: 64 * 1024,
        max_unpacked_bytes: 256 * 1024,
        max_files: 64,
    }
}

/// Longest refusal message accepted, in characters: two quoted names of at most 200 characters
/// each, escaped, plus the sentence.
const MAX_ERROR_CHARS: usize = 1200;
/// Symlink hops after which the kernel gives up (ELOOP); such a link leads nowhere.
const MAX_SYMLINK_HOPS: usize = 40;

/// Turns a fuzz input into an upload. First byte 0 (or an empty input): the rest is uploaded as
/// it is, which exercises the zstd decoder. Any other first byte: the rest is a tar stream,
/// compressed here, so the fuzzer mutates tar headers instead of compressed bytes.
pub fn upload_from_fuzz_input(data: &[u8]) -> Cow<'_, [u8]> {
    match data.split_first() {
        None => Cow::Borrowed(data),
        Some((0, rest)) => Cow::Borrowed(rest),
        Some((_, tar)) => Cow::Owned(zstd::bulk::compress(tar, 1).expect("zstd compresses")),
    }
}

/// What the store made of an upload that broke no invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Unpacked, committed and removed again.
    Accepted { files: u64, bytes: u64 },
    /// Refused with this message.
    Refused(String),
}

/// A fresh bundle store inside its own temporary directory, `<sandbox>/store`. The sandbox is
/// walked after each step: whatever appears in it outside the store's own places was written
/// by the unpacker where it must not write.
pub struct Sandbox {
    dir: tempfile::TempDir,
    store_root: PathBuf,
    store: BundleStore,
}

impl Sandbox {
    /// Creates the sandbox under `$TMPDIR` (scripts/fuzz.sh points it at a tmpfs).
    pub fn new() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-fuzz-")
            .tempdir()
            .map_err(|err| format!("cannot create the sandbox: {err}"))?;
        let store_root = dir.path().join("store");
        let store = BundleStore::open(&store_root, fuzz_limits())
            .map_err(|err| format!("cannot open the store: {err}"))?;
        let sandbox = Self {
            dir,
            store_root,
            store,
        };
        sandbox.expect_only_store_dirs("after open")?;
        Ok(sandbox)
    }

    /// The sandbox directory; hostile archives aim absolute paths into it.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Uploads `upload` and checks every invariant; `Err` describes the first one broken.
    pub fn check(&self, upload: &[u8]) -> Result<Verdict, String> {
        let staged = runtime()
            .block_on(
                self.store.stage(futures_util::stream::iter(
                    upload
                        .chunks(16 * 1024)
                        .map(|chunk| Ok::<_, Infallible>(Bytes::copy_from_slice(chunk))),
                )),
            )
            .map_err(|err| format!("staging failed: {err}"))?;
        let verdict = match self.store.unpack(&staged) {
            Err(err) => {
                check_refusal(&err)?;
                self.expect_store_dirs_and(&staged, None)
                    .map_err(|violation| format!("after refusing `{err}`: {violation}"))?;
                drop(staged);
                Verdict::Refused(err.to_string())
            }
            Ok(unpacked) => {
                let tree = unpacked.path().to_path_buf();
                self.expect_store_dirs_and(&staged, Some(&tree))?;
                check_tree(&tree, unpacked.files(), unpacked.bytes())?;
                let verdict = Verdict::Accepted {
                    files: unpacked.files(),
                    bytes: unpacked.bytes(),
                };
                self.commit_and_remove(staged, unpacked)?;
                verdict
            }
        };
        self.expect_only_store_dirs("at the end")?;
        Ok(verdict)
    }

    fn commit_and_remove(
        &self,
        staged: StagedBundle,
        unpacked: shoal::bundle::UnpackedBundle,
    ) -> Result<(), String> {
        let digest = staged.digest().to_owned();
        let release = self
            .store
            .commit(staged, unpacked)
            .map_err(|err| format!("commit of an accepted bundle failed: {err}"))?;
        if release != self.store_root.join("releases").join(&digest)
            || !self.store.contains(&digest)
        {
            return Err(format!("commit put the release at {}", release.display()));
        }
        check_read_only(&release)?;
        self.store
            .remove(&digest)
            .map_err(|err| format!("remove of a committed bundle failed: {err}"))?;
        if self.store.contains(&digest) || self.store.stored_bytes() != 0 {
            return Err("the store still holds a removed bundle".into());
        }
        Ok(())
    }

    /// Everything in the sandbox is the store's three directories, the staged upload and (if
    /// given) the unpacked tree.
    fn expect_store_dirs_and(
        &self,
        staged: &StagedBundle,
        tree: Option<&Path>,
    ) -> Result<(), String> {
        let mut uploads = 0;
        for path in self.sandbox_entries()? {
            if self.is_store_dir(&path) || tree.is_some_and(|tree| path.starts_with(tree)) {
                continue;
            }
            let is_upload = path.parent() == Some(&self.store_root.join("tmp"))
                && path.file_name().is_some_and(|name| {
                    let name = name.to_string_lossy();
                    name.starts_with("upload-") && name.ends_with(".tar.zst")
                });
            let size = fs::symlink_metadata(&path)
                .map(|meta| meta.is_file().then_some(meta.len()))
                .ok()
                .flatten();
            if is_upload && size == Some(staged.size()) {
                uploads += 1;
                continue;
            }
            return Err(format!("unexpected {} in the sandbox", self.shown(&path)));
        }
        if uploads != 1 {
            return Err(format!("{uploads} staged uploads in the store, not 1"));
        }
        Ok(())
    }

    fn expect_only_store_dirs(&self, when: &str) -> Result<(), String> {
        for path in self.sandbox_entries()? {
            if !self.is_store_dir(&path) {
                return Err(format!("{} left in the sandbox {when}", self.shown(&path)));
            }
        }
        Ok(())
    }

    fn is_store_dir(&self, path: &Path) -> bool {
        path == self.store_root
            || ["blobs", "releases", "tmp"]
                .iter()
                .any(|dir| path == self.store_root.join(dir))
    }

    fn sandbox_entries(&self) -> Result<Vec<PathBuf>, String> {
        walkdir::WalkDir::new(self.dir.path())
            .min_depth(1)
            .into_iter()
            .map(|entry| {
                entry
                    .map(walkdir::DirEntry::into_path)
                    .map_err(|err| format!("cannot walk the sandbox: {err}"))
            })
            .collect()
    }

    fn shown(&self, path: &Path) -> String {
        let relative = path.strip_prefix(self.dir.path()).unwrap_or(path);
        format!("`<sandbox>/{}`", relative.display())
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime starts")
    })
}

/// A refusal must be the client's fault and read as one clean sentence.
fn check_refusal(err: &BundleError) -> Result<(), String> {
    let message = err.to_string();
    if !err.is_client_error() {
        return Err(format!(
            "hostile input made the node's own I/O fail: {err:?}"
        ));
    }
    if message.chars().any(char::is_control) {
        return Err(format!("refusal has control characters: {message:?}"));
    }
    if message.chars().count() > MAX_ERROR_CHARS {
        return Err(format!(
            "refusal is {} characters long: {message:?}",
            message.chars().count()
        ));
    }
    Ok(())
}

/// Checks an accepted tree against the limits and the store's counts.
fn check_tree(root: &Path, files: u64, bytes: u64) -> Result<(), String> {
    let limits = fuzz_limits();
    let mut entries = 0u64;
    let mut file_entries = 0u64;
    // (device, inode) -> (names in the tree, link count, size)
    let mut inodes: HashMap<(u64, u64), (u64, u64, u64)> = HashMap::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1) {
        let entry = entry.map_err(|err| format!("cannot walk the tree: {err}"))?;
        let relative = entry
            .path()
            .strip_prefix(root)
            .expect("walk stays under root");
        let meta = fs::symlink_metadata(entry.path())
            .map_err(|err| format!("cannot stat {}: {err}", relative.display()))?;
        entries += 1;
        let kind = meta.file_type();
        if kind.is_file() {
            file_entries += 1;
            let mode = meta.permissions().mode() & 0o7777;
            if mode != 0o644 && mode != 0o755 {
                return Err(format!("{} has mode {mode:o}", relative.display()));
            }
            let inode =
                inodes
                    .entry((meta.dev(), meta.ino()))
                    .or_insert((0, meta.nlink(), meta.len()));
            inode.0 += 1;
        } else if kind.is_symlink() {
            symlink_stays_inside(root, relative)?;
        } else if !kind.is_dir() {
            return Err(format!("{} is a {kind:?}", relative.display()));
        }
    }
    if let Some((names, links, _)) = inodes.values().find(|(names, links, _)| names != links) {
        return Err(format!(
            "a file has {links} links but {names} names in the tree: a hard link leaves it"
        ));
    }
    let unique_bytes: u64 = inodes.values().map(|(_, _, size)| size).sum();
    if entries > limits.max_files || bytes > limits.max_unpacked_bytes {
        return Err(format!(
            "{entries} entries and {bytes} bytes accepted, past the limits"
        ));
    }
    if file_entries != files || unique_bytes != bytes {
        return Err(format!(
            "the store reports {files} files and {bytes} bytes, the tree has {file_entries} and {unique_bytes}"
        ));
    }
    Ok(())
}

enum Step {
    Up,
    Name(OsString),
}

fn steps(path: &Path) -> Result<Vec<Step>, String> {
    path.components()
        .filter_map(|component| match component {
            Component::CurDir => None,
            Component::ParentDir => Some(Ok(Step::Up)),
            Component::Normal(name) => Some(Ok(Step::Name(name.to_owned()))),
            Component::RootDir | Component::Prefix(_) => {
                Some(Err(format!("absolute link target {}", path.display())))
            }
        })
        .collect()
}

/// Resolves `link` (relative to `root`) as the kernel would, following symlinks inside the tree
/// and taking missing names lexically, and fails if that ever climbs above `root`.
fn symlink_stays_inside(root: &Path, link: &Path) -> Result<(), String> {
    let escapes = |why: String| format!("symlink {} leaves the tree: {why}", link.display());
    let mut pending: VecDeque<Step> = steps(link).map_err(escapes)?.into();
    let mut current = PathBuf::new();
    let mut hops = 0;
    while let Some(step) = pending.pop_front() {
        let name = match step {
            Step::Up if current.pop() => continue,
            Step::Up => return Err(escapes("`..` above the root".into())),
            Step::Name(name) => name,
        };
        current.push(&name);
        let real = root.join(&current);
        let is_link = fs::symlink_metadata(&real).is_ok_and(|meta| meta.file_type().is_symlink());
        if !is_link {
            continue;
        }
        hops += 1;
        if hops > MAX_SYMLINK_HOPS {
            return Ok(());
        }
        let target = fs::read_link(&real)
            .map_err(|err| format!("cannot read link {}: {err}", current.display()))?;
        current.pop();
        for step in steps(&target).map_err(escapes)?.into_iter().rev() {
            pending.push_front(step);
        }
    }
    Ok(())
}

/// A committed release: directories 0555, files 0444 or 0555.
fn check_read_only(release: &Path) -> Result<(), String> {
    for entry in walkdir::WalkDir::new(release) {
        let entry = entry.map_err(|err| format!("cannot walk the release: {err}"))?;
        let meta = fs::symlink_metadata(entry.path()).map_err(|err| err.to_string())?;
        let mode = meta.permissions().mode() & 0o7777;
        let read_only = if meta.is_dir() {
            mode == 0o555
        } else if meta.is_file() {
            mode == 0o444 || mode == 0o555
        } else {
            true
        };
        if !read_only {
            return Err(format!(
                "committed {} has mode {mode:o}",
                entry.path().display()
            ));
        }
    }
    Ok(())
}
