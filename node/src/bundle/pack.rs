//! Packing a directory into a deterministic tar.zst, on the CLI's side of an upload.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::unpack::{validate_entry_path, validate_symlink_target};
use super::BundleError;

const PACK_ZSTD_LEVEL: i32 = 3;

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
        let relative = entry
            .path()
            .strip_prefix(dir)
            .expect("walkdir stays under its root");
        validate_entry_path(relative.as_os_str().as_bytes())?;
        let file_type = entry.file_type();
        let kind = if file_type.is_dir() {
            SourceKind::Dir
        } else if file_type.is_symlink() {
            let target =
                fs::read_link(entry.path()).map_err(|err| pack_error(entry.path(), &err))?;
            validate_symlink_target(relative, target.as_os_str().as_bytes())?;
            SourceKind::Symlink { target }
        } else if file_type.is_file() {
            let metadata = entry
                .metadata()
                .map_err(|err| pack_error(entry.path(), &err))?;
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
                return Err(pack_error(
                    &path,
                    "it changed while it was being packed; try again",
                ));
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
