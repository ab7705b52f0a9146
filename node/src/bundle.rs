//! App bundles: how an app's directory travels from the CLI to a node and is kept there.
//!
//! The CLI packs a directory into a deterministic tar.zst with [`pack_dir`]. The node streams the
//! upload into its [`BundleStore`] ([`BundleStore::stage`]), unpacks it into a staging directory
//! while refusing anything hostile ([`BundleStore::unpack`]), then moves blob and tree under their
//! sha256 digest ([`BundleStore::commit`]). A refused bundle leaves nothing on disk.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header, PaxExtensions};
use tokio::io::AsyncWriteExt;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// 2^27 = 128 MiB: enough for `zstd --long`, small enough that a frame cannot make the node
/// allocate gigabytes of window.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
const PACK_ZSTD_LEVEL: i32 = 3;
/// GNU long names and pax headers are read into memory whole, so they get their own cap.
const MAX_METADATA_ENTRY_BYTES: u64 = MIB;
/// Leaves room for the store's own prefix under Linux's 4096-byte PATH_MAX.
const MAX_ENTRY_PATH_BYTES: usize = 3072;
const MAX_NAME_COMPONENT_BYTES: usize = 255;
/// Decompressed bytes allowed per entry beyond file contents: its header, padding and long names.
const ARCHIVE_OVERHEAD_PER_ENTRY: u64 = 4 * KIB;
const BLOB_SUFFIX: &str = ".tar.zst";
/// Error messages quote entry names; a hostile name should not flood a log line.
const MAX_SHOWN_NAME_CHARS: usize = 200;

/// Limits on what one bundle may hold; every field configurable by node flags.
#[derive(Clone, Debug)]
pub struct BundleLimits {
    /// Size of the uploaded `.tar.zst` (`--bundle-max-bytes`).
    pub max_compressed_bytes: u64,
    /// Sum of regular file sizes, and bytes coming out of the decompressor
    /// (`--bundle-max-unpacked-bytes`).
    pub max_unpacked_bytes: u64,
    /// Entries in the unpacked tree, directories and links included (`--bundle-max-files`).
    pub max_files: u64,
}

impl Default for BundleLimits {
    fn default() -> Self {
        Self {
            max_compressed_bytes: 256 * MIB,
            max_unpacked_bytes: GIB,
            max_files: 20_000,
        }
    }
}

/// Why a bundle was refused, or why the node could not store it.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// An entry name has a `..` component.
    #[error("bundle entry `{path}` leaves the bundle")]
    PathEscapes { path: String },
    /// An entry name is absolute or starts with a drive letter.
    #[error("bundle entry `{path}` is an absolute path; entries must be relative to the bundle root")]
    AbsolutePath { path: String },
    /// An entry has no name.
    #[error("bundle holds an entry with an empty name")]
    EmptyPath,
    /// An entry name cannot be created safely (NUL, backslash, too long).
    #[error("bundle entry `{path}` has an unusable name: it {reason}")]
    BadName { path: String, reason: &'static str },
    /// A symlink or hard link points outside the bundle.
    #[error("bundle entry `{path}` links to `{target}`, which leaves the bundle")]
    LinkEscapes { path: String, target: String },
    /// A symlink target that cannot be proven to stay inside the bundle.
    #[error("bundle entry `{path}` links to `{target}`, which is not allowed: {reason}")]
    LinkUnsupported {
        path: String,
        target: String,
        reason: &'static str,
    },
    /// A hard link whose target is not a regular file earlier in the archive.
    #[error(
        "bundle entry `{path}` is a hard link to `{target}`, which is not a file earlier in the bundle"
    )]
    HardLinkTarget { path: String, target: String },
    /// An entry would be written through a symlink created earlier in the archive.
    #[error("bundle entry `{path}` goes through the symlink `{link}`; entries may not be written through links")]
    ThroughSymlink { path: String, link: String },
    /// An entry sits below something that is not a directory.
    #[error("bundle entry `{path}` is inside `{parent}`, which is not a directory")]
    ParentNotDirectory { path: String, parent: String },
    /// A device, FIFO or other entry type that is not a file, directory or link.
    #[error("bundle entry `{path}` is a {kind}; only files, directories and links inside the bundle are allowed")]
    SpecialFile { path: String, kind: &'static str },
    /// The same name appears twice.
    #[error("bundle entry `{path}` appears more than once")]
    Duplicate { path: String },
    /// The compressed upload passed `max_compressed_bytes`.
    #[error("bundle is larger than the {} limit (--bundle-max-bytes)", format_bytes(*limit))]
    TooLarge { limit: u64 },
    /// Declared or decompressed bytes passed `max_unpacked_bytes`.
    #[error("bundle unpacks to more than {} (--bundle-max-unpacked-bytes)", format_bytes(*limit))]
    TooManyBytesUnpacked { limit: u64 },
    /// More entries than `max_files`.
    #[error("bundle holds more than {limit} entries (--bundle-max-files)")]
    TooManyFiles { limit: u64 },
    /// Not zstd, not tar, truncated or otherwise malformed.
    #[error("bundle is not a valid tar.zst archive: {0}")]
    InvalidArchive(String),
    /// The upload stream failed before it ended.
    #[error("bundle upload failed: {0}")]
    Upload(String),
    /// A digest that is not 64 lowercase hex characters.
    #[error("`{0}` is not a bundle digest (64 lowercase hex characters)")]
    InvalidDigest(String),
    /// The CLI could not pack a file of the source directory.
    #[error("cannot pack `{path}`: {reason}")]
    PackSource { path: String, reason: String },
    /// The node's (or the packer's output's) own I/O failed.
    #[error("bundle storage failed: {0}")]
    Io(#[from] io::Error),
}

impl BundleError {
    /// True when the client sent a bad bundle (4xx), false for the node's own failures (5xx).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, BundleError::Io(_))
    }
}

/// What [`pack_dir`] put in the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackSummary {
    /// Regular files packed.
    pub files: u64,
    /// Their total size before compression.
    pub bytes: u64,
}

/// Packs `dir` into a deterministic tar.zst written to `out`.
///
/// Entries are sorted by path, with mtime 0, uid/gid 0, no user/group names, mode 0o644 for files
/// (0o755 if any exec bit was set) and 0o755 for directories; symlinks stay symlinks and must
/// point inside the directory. `.git/` and `shoal-data/` at the top are skipped. The same content
/// always gives the same bytes and so the same digest. `on_progress(bytes_read_so_far,
/// total_bytes)` is called as files are read.
pub fn pack_dir(
    dir: &Path,
    out: impl Write,
    on_progress: impl FnMut(u64, u64),
) -> Result<PackSummary, BundleError> {
    let sources = collect_pack_sources(dir)?;
    let total = sources
        .iter()
        .map(|source| match source.kind {
            SourceKind::File { size, .. } => size,
            _ => 0,
        })
        .sum();
    let mut progress = Progress {
        done: 0,
        total,
        callback: on_progress,
    };
    (progress.callback)(0, total);
    let mut builder = tar::Builder::new(zstd::Encoder::new(out, PACK_ZSTD_LEVEL)?);
    let mut summary = PackSummary { files: 0, bytes: 0 };
    for source in &sources {
        append_pack_source(&mut builder, dir, source, &mut progress)?;
        if let SourceKind::File { size, .. } = source.kind {
            summary.files += 1;
            summary.bytes += size;
        }
    }
    builder.into_inner()?.finish()?;
    Ok(summary)
}

struct PackSource {
    relative: PathBuf,
    kind: SourceKind,
}

enum SourceKind {
    Dir,
    File { size: u64, executable: bool },
    Symlink { target: PathBuf },
}

struct Progress<F> {
    done: u64,
    total: u64,
    callback: F,
}

/// Walks `dir` in sorted order and checks every name with the node's own rules, so a bundle the
/// node would refuse fails here, before the upload.
fn collect_pack_sources(dir: &Path) -> Result<Vec<PackSource>, BundleError> {
    let walk = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|entry| {
            !(entry.depth() == 1 && matches!(entry.file_name().as_bytes(), b".git" | b"shoal-data"))
        });
    let mut sources = Vec::new();
    for entry in walk {
        let entry = entry.map_err(|err| pack_error(err.path().unwrap_or(dir), &err))?;
        let relative = entry.path().strip_prefix(dir).expect("walkdir stays under its root");
        validate_entry_path(relative.as_os_str().as_bytes())?;
        let file_type = entry.file_type();
        let kind = if file_type.is_dir() {
            SourceKind::Dir
        } else if file_type.is_symlink() {
            let target = fs::read_link(entry.path()).map_err(|err| pack_error(entry.path(), &err))?;
            validate_symlink_target(relative, target.as_os_str().as_bytes())?;
            SourceKind::Symlink { target }
        } else if file_type.is_file() {
            let metadata = entry.metadata().map_err(|err| pack_error(entry.path(), &err))?;
            SourceKind::File {
                size: metadata.len(),
                executable: metadata.permissions().mode() & 0o111 != 0,
            }
        } else {
            return Err(pack_error(
                entry.path(),
                "it is a device, FIFO or socket; bundles hold only files, directories and symlinks",
            ));
        };
        sources.push(PackSource {
            relative: relative.to_path_buf(),
            kind,
        });
    }
    Ok(sources)
}

fn append_pack_source<W: Write, F: FnMut(u64, u64)>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    source: &PackSource,
    progress: &mut Progress<F>,
) -> Result<(), BundleError> {
    match &source.kind {
        SourceKind::Dir => {
            let mut header = pack_header(EntryType::Directory, 0o755, 0);
            builder.append_data(&mut header, &source.relative, io::empty())?;
        }
        SourceKind::Symlink { target } => {
            let mut header = pack_header(EntryType::Symlink, 0o777, 0);
            builder.append_link(&mut header, &source.relative, target)?;
        }
        SourceKind::File { size, executable } => {
            let path = dir.join(&source.relative);
            let file = File::open(&path).map_err(|err| pack_error(&path, &err))?;
            let mode = if *executable { 0o755 } else { 0o644 };
            let mut header = pack_header(EntryType::Regular, mode, *size);
            let mut reader = ProgressReader {
                inner: file.take(*size),
                read: 0,
                read_error: None,
                progress,
            };
            if let Err(err) = builder.append_data(&mut header, &source.relative, &mut reader) {
                return Err(match reader.read_error {
                    Some(read_error) => pack_error(&path, &read_error),
                    None => BundleError::Io(err),
                });
            }
            if reader.read != *size {
                return Err(pack_error(&path, "it changed while it was being packed; try again"));
            }
        }
    }
    Ok(())
}

fn pack_header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn pack_error(path: &Path, reason: impl ToString) -> BundleError {
    BundleError::PackSource {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Reports progress, and remembers a read error so it is blamed on the source file rather than
/// on the output.
struct ProgressReader<'a, R, F> {
    inner: R,
    read: u64,
    read_error: Option<io::Error>,
    progress: &'a mut Progress<F>,
}

impl<R: Read, F: FnMut(u64, u64)> Read for ProgressReader<'_, R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf).inspect_err(|err| {
            self.read_error = Some(io::Error::new(err.kind(), err.to_string()));
        })?;
        self.read += read as u64;
        self.progress.done += read as u64;
        (self.progress.callback)(self.progress.done, self.progress.total);
        Ok(read)
    }
}

/// The node's content-addressed bundle store under `<data-dir>/bundles`: `blobs/<sha256>.tar.zst`,
/// `releases/<sha256>/` (unpacked, read-only) and `tmp/` (staging, wiped at open).
///
/// A digest counts as stored once both its blob and its tree are in place; the tree moves first,
/// so a crash can only leave a tree without a blob, which [`BundleStore::open`] removes.
#[derive(Debug)]
pub struct BundleStore {
    blobs_dir: PathBuf,
    releases_dir: PathBuf,
    tmp_dir: PathBuf,
    limits: BundleLimits,
    stored_bytes: AtomicU64,
    /// Serialises the renames of commit and remove so two uploads of the same content, or an
    /// upload racing a delete, cannot interleave.
    placement_lock: Mutex<()>,
}

impl BundleStore {
    /// Opens (creating if needed) the store rooted at `root`, normally `<data-dir>/bundles`.
    pub fn open(root: &Path, limits: BundleLimits) -> Result<Self, BundleError> {
        let store = Self {
            blobs_dir: root.join("blobs"),
            releases_dir: root.join("releases"),
            tmp_dir: root.join("tmp"),
            limits,
            stored_bytes: AtomicU64::new(0),
            placement_lock: Mutex::new(()),
        };
        fs::create_dir_all(&store.blobs_dir)?;
        fs::create_dir_all(&store.releases_dir)?;
        remove_tree(&store.tmp_dir)?;
        fs::create_dir_all(&store.tmp_dir)?;
        for entry in fs::read_dir(&store.releases_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let digest = name.to_string_lossy();
            if is_valid_digest(&digest) && !store.blob_path(&digest).is_file() {
                tracing::warn!(digest = %digest, "removing release left without its blob");
                remove_tree(&entry.path())?;
            }
        }
        let mut stored = 0;
        for digest in store.digests()? {
            stored += fs::metadata(store.blob_path(&digest))?.len();
        }
        store.stored_bytes.store(stored, Ordering::Relaxed);
        Ok(store)
    }

    /// The limits every upload is checked against.
    pub fn limits(&self) -> &BundleLimits {
        &self.limits
    }

    /// Streams an upload into `tmp/`, hashing as it goes; refuses it past `max_compressed_bytes`
    /// and deletes the partial file. The file is synced before this returns.
    pub async fn stage<S, E>(&self, mut body: S) -> Result<StagedBundle, BundleError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (file, path) = tempfile::Builder::new()
            .prefix("upload-")
            .suffix(BLOB_SUFFIX)
            .tempfile_in(&self.tmp_dir)?
            .into_parts();
        let mut writer =
            tokio::io::BufWriter::with_capacity(256 * KIB as usize, tokio::fs::File::from_std(file));
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| BundleError::Upload(err.to_string()))?;
            size += chunk.len() as u64;
            if size > self.limits.max_compressed_bytes {
                return Err(BundleError::TooLarge {
                    limit: self.limits.max_compressed_bytes,
                });
            }
            hasher.update(&chunk);
            writer.write_all(&chunk).await?;
        }
        writer.flush().await?;
        writer.into_inner().sync_all().await?;
        Ok(StagedBundle {
            path,
            digest: hex::encode(hasher.finalize()),
            size,
        })
    }

    /// Unpacks a staged bundle into a fresh directory under `tmp/`, refusing absolute or `..`
    /// names, links leaving the bundle, writes through links, devices and FIFOs, duplicates, and
    /// anything past the limits. Blocking: call it in `spawn_blocking`. The caller then reads
    /// `shoal.toml` from [`UnpackedBundle::path`].
    pub fn unpack(&self, staged: &StagedBundle) -> Result<UnpackedBundle, BundleError> {
        let dir = tempfile::Builder::new()
            .prefix("unpack-")
            .tempdir_in(&self.tmp_dir)?
            .keep();
        let mut unpacked = UnpackedBundle {
            dir: Some(dir),
            files: 0,
            bytes: 0,
        };
        let (files, bytes) = unpack_archive(&staged.path, unpacked.path(), &self.limits)?;
        unpacked.files = files;
        unpacked.bytes = bytes;
        Ok(unpacked)
    }

    /// Moves blob and tree to their content-addressed places and makes the tree read-only (files
    /// 0o444 or 0o555, directories 0o555); if the digest is already stored, the new copies are
    /// discarded. Returns the release directory. Blocking.
    pub fn commit(
        &self,
        staged: StagedBundle,
        mut unpacked: UnpackedBundle,
    ) -> Result<PathBuf, BundleError> {
        let StagedBundle { path, digest, size } = staged;
        let release = self.release_dir(&digest);
        if self.contains(&digest) {
            return Ok(release);
        }
        make_read_only(unpacked.path())?;
        let _placement = self.placement_lock.lock().unwrap_or_else(|err| err.into_inner());
        if self.contains(&digest) {
            return Ok(release);
        }
        // Only a tree whose blob is missing can be here, which nothing may use; replace it.
        remove_tree(&release)?;
        fs::rename(unpacked.path(), &release)?;
        unpacked.dir = None;
        sync_dir(&self.releases_dir)?;
        let blob = self.blob_path(&digest);
        let blob_was_stored = blob.is_file();
        if let Err(err) = path.persist(&blob) {
            let _ = remove_tree(&release);
            return Err(err.error.into());
        }
        sync_dir(&self.blobs_dir)?;
        if !blob_was_stored {
            self.stored_bytes.fetch_add(size, Ordering::Relaxed);
        }
        Ok(release)
    }

    /// Where the unpacked tree of `digest` lives (whether or not it is stored). `digest` must
    /// satisfy [`is_valid_digest`]; check untrusted digests first.
    pub fn release_dir(&self, digest: &str) -> PathBuf {
        debug_assert!(is_valid_digest(digest), "unchecked digest {digest:?}");
        self.releases_dir.join(digest)
    }

    /// Where the compressed blob of `digest` lives, for serving it to peers. Same precondition
    /// as [`BundleStore::release_dir`].
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        debug_assert!(is_valid_digest(digest), "unchecked digest {digest:?}");
        self.blobs_dir.join(format!("{digest}{BLOB_SUFFIX}"))
    }

    /// Whether both the blob and the tree of `digest` are stored; false for malformed digests.
    pub fn contains(&self, digest: &str) -> bool {
        is_valid_digest(digest)
            && self.blob_path(digest).is_file()
            && self.release_dir(digest).is_dir()
    }

    /// Deletes a stored blob and its tree; deleting a digest that is not stored is not an error.
    /// Blocking.
    pub fn remove(&self, digest: &str) -> Result<(), BundleError> {
        if !is_valid_digest(digest) {
            return Err(BundleError::InvalidDigest(digest.to_owned()));
        }
        let _placement = self.placement_lock.lock().unwrap_or_else(|err| err.into_inner());
        let blob = self.blob_path(digest);
        match fs::metadata(&blob) {
            Ok(metadata) => {
                fs::remove_file(&blob)?;
                self.stored_bytes.fetch_sub(metadata.len(), Ordering::Relaxed);
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err.into()),
        }
        let release = self.release_dir(digest);
        if fs::symlink_metadata(&release).is_ok() {
            // The tree disappears from releases/ at once; a crash during the slow part leaves
            // it in tmp/, which the next open wipes.
            let doomed = tempfile::Builder::new()
                .prefix("remove-")
                .tempdir_in(&self.tmp_dir)?
                .keep();
            fs::rename(&release, doomed.join(digest))?;
            remove_tree(&doomed)?;
        }
        Ok(())
    }

    /// Sum of stored blob sizes, for the `shoal_bundle_bytes_stored` metric.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::Relaxed)
    }

    /// Digests of every stored bundle, sorted.
    pub fn digests(&self) -> Result<Vec<String>, BundleError> {
        let mut digests = Vec::new();
        for entry in fs::read_dir(&self.blobs_dir)? {
            let name = entry?.file_name();
            let Some(digest) = name.to_str().and_then(|name| name.strip_suffix(BLOB_SUFFIX)) else {
                continue;
            };
            if self.contains(digest) {
                digests.push(digest.to_owned());
            }
        }
        digests.sort();
        Ok(digests)
    }
}

/// True for a sha256 digest as the store names it: 64 lowercase hex characters.
pub fn is_valid_digest(digest: &str) -> bool {
    digest.len() == 64 && digest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An upload written to `tmp/`: its sha256 (lowercase hex) and size. Dropping it without
/// [`BundleStore::commit`] deletes the file.
#[derive(Debug)]
pub struct StagedBundle {
    path: tempfile::TempPath,
    digest: String,
    size: u64,
}

impl StagedBundle {
    /// The sha256 of the uploaded bytes, lowercase hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The size of the upload in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// A tree unpacked in `tmp/`. Dropping it without [`BundleStore::commit`] deletes the tree.
#[derive(Debug)]
pub struct UnpackedBundle {
    /// `None` once committed: the tree belongs to the store then.
    dir: Option<PathBuf>,
    files: u64,
    bytes: u64,
}

impl UnpackedBundle {
    /// The root of the unpacked tree.
    pub fn path(&self) -> &Path {
        self.dir.as_deref().expect("an uncommitted bundle has its tree")
    }

    /// Regular files unpacked, hard links included.
    pub fn files(&self) -> u64 {
        self.files
    }

    /// Total size of the regular files unpacked, hard links not counted again.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for UnpackedBundle {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            if let Err(err) = remove_tree(&dir) {
                tracing::warn!(path = %dir.display(), error = %err, "staged bundle tree not removed");
            }
        }
    }
}

/// Decompresses and unpacks `blob` into `root`, returning (files, bytes).
fn unpack_archive(
    blob: &Path,
    root: &Path,
    limits: &BundleLimits,
) -> Result<(u64, u64), BundleError> {
    let mut decoder = zstd::Decoder::new(File::open(blob)?).map_err(invalid_archive)?;
    decoder
        .window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(invalid_archive)?;
    let exceeded = Rc::new(Cell::new(false));
    let overhead = limits.max_files.saturating_mul(ARCHIVE_OVERHEAD_PER_ENTRY);
    let reader = DecompressedLimit {
        inner: decoder,
        remaining: limits.max_unpacked_bytes.saturating_add(MIB).saturating_add(overhead),
        exceeded: Rc::clone(&exceeded),
    };
    let result = Unpacker::new(root, limits).run(reader);
    // Whatever error the cut-off stream caused further up, the cause is the limit.
    if exceeded.get() {
        return Err(BundleError::TooManyBytesUnpacked {
            limit: limits.max_unpacked_bytes,
        });
    }
    result
}

fn invalid_archive(err: impl ToString) -> BundleError {
    BundleError::InvalidArchive(err.to_string())
}

/// Cuts the decompressed stream off past a byte budget, so a bomb is caught whatever sizes its
/// headers claim (data under directory entries, padding, metadata headers).
struct DecompressedLimit<R> {
    inner: R,
    remaining: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for DecompressedLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        match self.remaining.checked_sub(read as u64) {
            Some(remaining) => {
                self.remaining = remaining;
                Ok(read)
            }
            None => {
                self.exceeded.set(true);
                Err(io::Error::other("decompressed bundle exceeds its size limit"))
            }
        }
    }
}

/// What the unpacker created at a path. Only the unpacker writes into its tree, so this map is
/// the truth about it and ancestors need no `lstat`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Node {
    /// `explicit` is false for a directory created only as some entry's parent.
    Dir { explicit: bool },
    File,
    Symlink,
}

struct Unpacker<'a> {
    root: &'a Path,
    limits: &'a BundleLimits,
    nodes: HashMap<PathBuf, Node>,
    files: u64,
    bytes: u64,
}

/// GNU long-name/long-link and pax headers waiting for the entry they describe. The archive is
/// read raw so their size can be capped before they are read into memory.
#[derive(Default)]
struct PendingMetadata {
    long_path: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

impl<'a> Unpacker<'a> {
    fn new(root: &'a Path, limits: &'a BundleLimits) -> Self {
        Self {
            root,
            limits,
            nodes: HashMap::new(),
            files: 0,
            bytes: 0,
        }
    }

    fn run(mut self, reader: impl Read) -> Result<(u64, u64), BundleError> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(invalid_archive)?.raw(true);
        let mut pending = PendingMetadata::default();
        for entry in entries {
            let mut entry = entry.map_err(invalid_archive)?;
            if pending.absorb(&mut entry)? {
                continue;
            }
            let (path, link) = pending.take_names(&entry);
            self.unpack_entry(&mut entry, &path, link.as_deref())?;
        }
        if pending.long_path.is_some() || pending.long_link.is_some() || pending.pax.is_some() {
            return Err(invalid_archive("it ends with metadata for a missing entry"));
        }
        if self.nodes.is_empty() {
            return Err(invalid_archive("it holds no files"));
        }
        Ok((self.files, self.bytes))
    }

    fn unpack_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        raw_path: &[u8],
        raw_link: Option<&[u8]>,
    ) -> Result<(), BundleError> {
        let kind = entry.header().entry_type();
        refuse_special_kind(kind, raw_path)?;
        let Some(path) = validate_entry_path(raw_path)? else {
            // `./` names the root, which exists already.
            return match kind {
                EntryType::Directory => Ok(()),
                _ => Err(BundleError::EmptyPath),
            };
        };
        self.ensure_parents(&path)?;
        match kind {
            EntryType::Directory => self.make_dir(&path),
            EntryType::Symlink => self.make_symlink(&path, raw_link.unwrap_or_default()),
            EntryType::Link => self.make_hard_link(&path, raw_link.unwrap_or_default()),
            _ => self.write_file(entry, &path),
        }
    }

    /// Creates missing parents of `path`, refusing to go through a symlink or a file.
    fn ensure_parents(&mut self, path: &Path) -> Result<(), BundleError> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        let mut prefix = PathBuf::new();
        for component in parent.components() {
            prefix.push(component);
            match self.nodes.get(&prefix) {
                Some(Node::Dir { .. }) => {}
                Some(Node::Symlink) => {
                    return Err(BundleError::ThroughSymlink {
                        path: show_path(path),
                        link: show_path(&prefix),
                    })
                }
                Some(Node::File) => {
                    return Err(BundleError::ParentNotDirectory {
                        path: show_path(path),
                        parent: show_path(&prefix),
                    })
                }
                None => {
                    self.record(&prefix, Node::Dir { explicit: false })?;
                    fs::create_dir(self.root.join(&prefix))?;
                }
            }
        }
        Ok(())
    }

    /// Claims `path` for a new node, refusing duplicates and entries past `max_files`.
    fn record(&mut self, path: &Path, node: Node) -> Result<(), BundleError> {
        if self.nodes.contains_key(path) {
            return Err(BundleError::Duplicate {
                path: show_path(path),
            });
        }
        if self.nodes.len() as u64 >= self.limits.max_files {
            return Err(BundleError::TooManyFiles {
                limit: self.limits.max_files,
            });
        }
        self.nodes.insert(path.to_path_buf(), node);
        Ok(())
    }

    fn make_dir(&mut self, path: &Path) -> Result<(), BundleError> {
        // Archives may list a directory after files inside it.
        if let Some(Node::Dir { explicit }) = self.nodes.get_mut(path) {
            if !*explicit {
                *explicit = true;
                return Ok(());
            }
        }
        self.record(path, Node::Dir { explicit: true })?;
        fs::create_dir(self.root.join(path))?;
        Ok(())
    }

    fn make_symlink(&mut self, path: &Path, target: &[u8]) -> Result<(), BundleError> {
        validate_symlink_target(path, target)?;
        self.record(path, Node::Symlink)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(target), self.root.join(path))?;
        Ok(())
    }

    /// Hard link names are archive paths, not relative to the link, and must name a regular
    /// file unpacked earlier; linking within the tree costs no extra disk.
    fn make_hard_link(&mut self, path: &Path, target: &[u8]) -> Result<(), BundleError> {
        let escapes = || BundleError::LinkEscapes {
            path: show_path(path),
            target: show_bytes(target),
        };
        let target_path = validate_entry_path(target)
            .map_err(|_| escapes())?
            .ok_or_else(escapes)?;
        if self.nodes.get(&target_path) != Some(&Node::File) {
            return Err(BundleError::HardLinkTarget {
                path: show_path(path),
                target: show_bytes(target),
            });
        }
        self.record(path, Node::File)?;
        fs::hard_link(self.root.join(&target_path), self.root.join(path))?;
        self.files += 1;
        Ok(())
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        path: &Path,
    ) -> Result<(), BundleError> {
        let size = entry.size();
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > self.limits.max_unpacked_bytes {
            return Err(BundleError::TooManyBytesUnpacked {
                limit: self.limits.max_unpacked_bytes,
            });
        }
        let declared_mode = entry.header().mode().map_err(invalid_archive)?;
        // Only the exec bit survives: no setuid/setgid/sticky, and always readable.
        let mode = if declared_mode & 0o111 != 0 { 0o755 } else { 0o644 };
        self.record(path, Node::File)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(self.root.join(path))?;
        file.set_permissions(Permissions::from_mode(mode))?;
        if copy_entry_data(entry, &mut file)? != size {
            return Err(invalid_archive(format!(
                "entry `{}` is cut short",
                show_path(path)
            )));
        }
        self.files += 1;
        Ok(())
    }
}

impl PendingMetadata {
    /// Takes in `entry` if it is a metadata header; returns false for a real entry.
    fn absorb<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<bool, BundleError> {
        let kind = entry.header().entry_type();
        let slot = match kind {
            EntryType::GNULongName => &mut self.long_path,
            EntryType::GNULongLink => &mut self.long_link,
            EntryType::XHeader => &mut self.pax,
            // Global pax defaults (comments, mtimes) change nothing we use; the reader skips
            // the data, and the decompressed-bytes limit bounds it.
            EntryType::XGlobalHeader => return Ok(true),
            _ => return Ok(false),
        };
        if slot.is_some() {
            return Err(invalid_archive("two metadata headers describe the same entry"));
        }
        if entry.size() > MAX_METADATA_ENTRY_BYTES {
            return Err(invalid_archive("a long-name or pax header is larger than 1 MiB"));
        }
        let mut data = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut data).map_err(invalid_archive)?;
        if kind == EntryType::XHeader {
            check_pax_records(&data)?;
        }
        *slot = Some(data);
        Ok(true)
    }

    /// The entry's name and link target, from pending metadata or its own header.
    fn take_names<R: Read>(&mut self, entry: &tar::Entry<R>) -> (Vec<u8>, Option<Vec<u8>>) {
        let pax = self.pax.take();
        let pax_value = |key: &[u8]| {
            PaxExtensions::new(pax.as_deref()?)
                .filter_map(Result::ok)
                .find(|record| record.key_bytes() == key)
                .map(|record| record.value_bytes().to_vec())
        };
        let path = self
            .long_path
            .take()
            .map(trim_trailing_nuls)
            .or_else(|| pax_value(b"path"))
            .unwrap_or_else(|| entry.path_bytes().into_owned());
        let link = self
            .long_link
            .take()
            .map(trim_trailing_nuls)
            .or_else(|| pax_value(b"linkpath"))
            .or_else(|| entry.link_name_bytes().map(Cow::into_owned));
        (path, link)
    }
}

/// Read raw, the archive cannot honour a pax `size` or sparse map, so refuse them rather than
/// read the entry differently from other tar readers.
fn check_pax_records(data: &[u8]) -> Result<(), BundleError> {
    for record in PaxExtensions::new(data) {
        let record = record.map_err(|_| invalid_archive("a pax header is malformed"))?;
        let key = record.key_bytes();
        if key == b"size" || key.starts_with(b"GNU.sparse") {
            return Err(invalid_archive(format!(
                "pax `{}` records are not supported",
                show_bytes(key)
            )));
        }
    }
    Ok(())
}

fn trim_trailing_nuls(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

fn refuse_special_kind(kind: EntryType, raw_path: &[u8]) -> Result<(), BundleError> {
    let what = match kind {
        EntryType::Regular
        | EntryType::Directory
        | EntryType::Symlink
        | EntryType::Link => return Ok(()),
        EntryType::Char | EntryType::Block => "device file",
        EntryType::Fifo => "FIFO",
        EntryType::GNUSparse => "sparse file",
        _ => "tar entry of an unsupported type",
    };
    Err(BundleError::SpecialFile {
        path: show_bytes(raw_path),
        kind: what,
    })
}

/// Copies an entry's data, blaming read failures on the archive and write failures on the node.
fn copy_entry_data(entry: &mut impl Read, file: &mut File) -> Result<u64, BundleError> {
    let mut buffer = vec![0; 64 * KIB as usize];
    let mut copied = 0u64;
    loop {
        let read = match entry.read(&mut buffer) {
            Ok(0) => return Ok(copied),
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(invalid_archive(err)),
        };
        file.write_all(&buffer[..read])?;
        copied += read as u64;
    }
}

/// Checks an archive name and returns it relative to the bundle root, or `None` for the root
/// itself (`.` or `./`).
fn validate_entry_path(raw: &[u8]) -> Result<Option<PathBuf>, BundleError> {
    let bad_name = |reason| BundleError::BadName {
        path: show_bytes(raw),
        reason,
    };
    if raw.is_empty() {
        return Err(BundleError::EmptyPath);
    }
    if raw.len() > MAX_ENTRY_PATH_BYTES {
        return Err(bad_name("is longer than 3072 bytes"));
    }
    if raw.contains(&0) {
        return Err(bad_name("contains a NUL byte"));
    }
    // Harmless on Linux, but a path separator to any Windows tool that touches the bundle.
    if raw.contains(&b'\\') {
        return Err(bad_name("contains a backslash"));
    }
    if raw[0] == b'/' || has_drive_prefix(raw) {
        return Err(BundleError::AbsolutePath {
            path: show_bytes(raw),
        });
    }
    let mut relative = PathBuf::new();
    for component in Path::new(OsStr::from_bytes(raw)).components() {
        match component {
            Component::Normal(name) if name.len() > MAX_NAME_COMPONENT_BYTES => {
                return Err(bad_name("has a part longer than 255 bytes"));
            }
            Component::Normal(name) => relative.push(name),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(BundleError::PathEscapes {
                    path: show_bytes(raw),
                })
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(BundleError::AbsolutePath {
                    path: show_bytes(raw),
                })
            }
        }
    }
    Ok((!relative.as_os_str().is_empty()).then_some(relative))
}

fn has_drive_prefix(raw: &[u8]) -> bool {
    raw.len() >= 2 && raw[0].is_ascii_alphabetic() && raw[1] == b':' && raw.get(2).is_none_or(|&b| b == b'/')
}

/// Checks a symlink target, judged lexically from the link's own directory.
///
/// `..` may only lead the target: the link's ancestors are real directories, so leading `..`s
/// mean what they say, while a `..` after a name could follow another link (`d -> .`,
/// `e -> d/..`) and climb out of the bundle although the text stays inside it.
fn validate_symlink_target(link: &Path, target: &[u8]) -> Result<(), BundleError> {
    let unsupported = |reason| BundleError::LinkUnsupported {
        path: show_path(link),
        target: show_bytes(target),
        reason,
    };
    let escapes = || BundleError::LinkEscapes {
        path: show_path(link),
        target: show_bytes(target),
    };
    if target.is_empty() {
        return Err(unsupported("the target is empty"));
    }
    if target.len() > MAX_ENTRY_PATH_BYTES || target.contains(&0) {
        return Err(unsupported("the target is too long or contains a NUL byte"));
    }
    if target[0] == b'/' || has_drive_prefix(target) {
        return Err(escapes());
    }
    let mut depth = link.components().count().saturating_sub(1);
    let mut after_name = false;
    for component in Path::new(OsStr::from_bytes(target)).components() {
        match component {
            Component::ParentDir if after_name => {
                return Err(unsupported("`..` may only come at the start of a link target"));
            }
            Component::ParentDir => depth = depth.checked_sub(1).ok_or_else(escapes)?,
            Component::Normal(_) => after_name = true,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err(escapes()),
        }
    }
    Ok(())
}

/// Files keep only their exec bit; symlinks have no mode of their own.
fn make_read_only(root: &Path) -> Result<(), BundleError> {
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry.map_err(io::Error::from)?;
        let file_type = entry.file_type();
        let mode = if file_type.is_dir() {
            0o555
        } else if file_type.is_file() {
            let executable = entry.metadata().map_err(io::Error::from)?.permissions().mode() & 0o111;
            if executable != 0 {
                0o555
            } else {
                0o444
            }
        } else {
            continue;
        };
        fs::set_permissions(entry.path(), Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Removes a tree that may contain read-only directories; a missing tree is fine.
fn remove_tree(root: &Path) -> io::Result<()> {
    match fs::symlink_metadata(root) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
        Ok(metadata) if !metadata.is_dir() => return fs::remove_file(root),
        Ok(_) => {}
    }
    // Unlinking needs write permission on the parent directory, not on the file.
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry?;
        if entry.file_type().is_dir() {
            fs::set_permissions(entry.path(), Permissions::from_mode(0o755))?;
        }
    }
    fs::remove_dir_all(root)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn show_path(path: &Path) -> String {
    show_bytes(path.as_os_str().as_bytes())
}

/// Escapes control characters and shortens long names, since the text ends up in logs and
/// terminals.
fn show_bytes(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut shown: String = text.escape_debug().take(MAX_SHOWN_NAME_CHARS).collect();
    if shown.len() < text.escape_debug().map(char::len_utf8).sum() {
        shown.push('…');
    }
    shown
}

fn format_bytes(bytes: u64) -> String {
    for (unit, name) in [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if bytes >= unit {
            return if bytes % unit == 0 {
                format!("{} {name}", bytes / unit)
            } else {
                format!("{:.1} {name}", bytes as f64 / unit as f64)
            };
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
#[path = "bundle_tests.rs"]
mod tests;
