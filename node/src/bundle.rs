//! App bundles: how an app's directory travels from the CLI to a node and is kept there.
//!
//! The CLI packs a directory into a deterministic tar.zst with [`pack_dir`]. The node streams the
//! upload into its [`BundleStore`] ([`BundleStore::stage`]), unpacks it into a staging directory
//! while refusing anything hostile ([`BundleStore::unpack`]), then moves blob and tree under their
//! sha256 digest ([`BundleStore::commit`]). A refused bundle leaves nothing on disk.

use std::fs::{self, File, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

mod pack;
mod unpack;

pub use pack::{pack_dir, PackSummary};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

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
    #[error(
        "bundle entry `{path}` is an absolute path; entries must be relative to the bundle root"
    )]
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
        let mut writer = tokio::io::BufWriter::with_capacity(
            256 * KIB as usize,
            tokio::fs::File::from_std(file),
        );
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
        let (files, bytes) = unpack::unpack_archive(&staged.path, unpacked.path(), &self.limits)?;
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
        let _placement = self
            .placement_lock
            .lock()
            .unwrap_or_else(|err| err.into_inner());
        if self.contains(&digest) {
            return Ok(release);
        }
        // Only a tree whose blob is missing can be here, which nothing may use; replace it.
        remove_tree(&release)?;
        fs::rename(unpacked.path(), &release)?;
        unpacked.dir = None;
        fs::set_permissions(&release, Permissions::from_mode(0o555))?;
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
        let _placement = self
            .placement_lock
            .lock()
            .unwrap_or_else(|err| err.into_inner());
        let blob = self.blob_path(digest);
        match fs::metadata(&blob) {
            Ok(metadata) => {
                fs::remove_file(&blob)?;
                self.stored_bytes
                    .fetch_sub(metadata.len(), Ordering::Relaxed);
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
            fs::set_permissions(&release, Permissions::from_mode(0o755))?;
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
            let Some(digest) = name
                .to_str()
                .and_then(|name| name.strip_suffix(BLOB_SUFFIX))
            else {
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
    digest.len() == 64
        && digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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
        self.dir
            .as_deref()
            .expect("an uncommitted bundle has its tree")
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

/// Files keep only their exec bit; symlinks have no mode of their own. The root stays
/// writable: moving a directory to another parent rewrites its `..` entry.
fn make_read_only(root: &Path) -> Result<(), BundleError> {
    for entry in walkdir::WalkDir::new(root).min_depth(1) {
        let entry = entry.map_err(io::Error::from)?;
        let file_type = entry.file_type();
        let mode = if file_type.is_dir() {
            0o555
        } else if file_type.is_file() {
            let executable = entry
                .metadata()
                .map_err(io::Error::from)?
                .permissions()
                .mode()
                & 0o111;
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
pub(crate) fn show_bytes(bytes: &[u8]) -> String {
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
            return if bytes.is_multiple_of(unit) {
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
