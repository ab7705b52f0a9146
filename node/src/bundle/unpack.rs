//! Unpacking an untrusted tar.zst: each entry is checked, then created by hand, never through
//! `tar`'s own `unpack`.

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

use tar::{EntryType, PaxExtensions};

use super::{show_bytes, show_path, BundleError, BundleLimits, KIB, MIB};

/// 2^27 = 128 MiB: enough for `zstd --long`, small enough that a frame cannot make the node
/// allocate gigabytes of window.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// GNU long names and pax headers are read into memory whole, so they get their own cap.
const MAX_METADATA_ENTRY_BYTES: u64 = MIB;
/// Leaves room for the store's own prefix under Linux's 4096-byte PATH_MAX.
const MAX_ENTRY_PATH_BYTES: usize = 3072;
const MAX_NAME_COMPONENT_BYTES: usize = 255;
/// Decompressed bytes allowed per entry beyond file contents: its header, padding and long names.
const ARCHIVE_OVERHEAD_PER_ENTRY: u64 = 4 * KIB;

/// Decompresses and unpacks `blob` into `root`, returning (files, bytes).
pub(super) fn unpack_archive(
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
        remaining: limits
            .max_unpacked_bytes
            .saturating_add(MIB)
            .saturating_add(overhead),
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

/// The archive reader's complaint, escaped: it quotes header bytes and entry names from the
/// upload, which must not put control characters into logs and terminals.
fn invalid_archive(err: impl ToString) -> BundleError {
    BundleError::InvalidArchive(super::show_bytes(err.to_string().as_bytes()))
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
                Err(io::Error::other(
                    "decompressed bundle exceeds its size limit",
                ))
            }
        }
    }
}

/// What the unpacker created at a path. Only the unpacker writes into its tree, so this map is
/// the truth about it and ancestors need no `lstat`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Node {
    /// `explicit` is false for a directory created only as some entry's parent.
    Dir {
        explicit: bool,
    },
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
        let mode = if declared_mode & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
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
            return Err(invalid_archive(
                "two metadata headers describe the same entry",
            ));
        }
        if entry.size() > MAX_METADATA_ENTRY_BYTES {
            return Err(invalid_archive(
                "a long-name or pax header is larger than 1 MiB",
            ));
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
        EntryType::Regular | EntryType::Directory | EntryType::Symlink | EntryType::Link => {
            return Ok(())
        }
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
pub(super) fn validate_entry_path(raw: &[u8]) -> Result<Option<PathBuf>, BundleError> {
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
    raw.len() >= 2
        && raw[0].is_ascii_alphabetic()
        && raw[1] == b':'
        && raw.get(2).is_none_or(|&b| b == b'/')
}

/// Checks a symlink target, judged lexically from the link's own directory.
///
/// `..` may only lead the target: the link's ancestors are real directories, so leading `..`s
/// mean what they say, while a `..` after a name could follow another link (`d -> .`,
/// `e -> d/..`) and climb out of the bundle although the text stays inside it.
pub(super) fn validate_symlink_target(link: &Path, target: &[u8]) -> Result<(), BundleError> {
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
                return Err(unsupported(
                    "`..` may only come at the start of a link target",
                ));
            }
            Component::ParentDir => depth = depth.checked_sub(1).ok_or_else(escapes)?,
            Component::Normal(_) => after_name = true,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err(escapes()),
        }
    }
    Ok(())
}
