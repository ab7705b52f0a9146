use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};
use tempfile::TempDir;

use super::*;

const DIGEST_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn open_store(limits: BundleLimits) -> (TempDir, BundleStore) {
    let data_dir = TempDir::new().unwrap();
    let store = BundleStore::open(&data_dir.path().join("bundles"), limits).unwrap();
    (data_dir, store)
}

fn body(bytes: &[u8]) -> impl Stream<Item = Result<Bytes, io::Error>> + Unpin {
    let chunks: Vec<_> = bytes
        .chunks(16 * 1024)
        .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
        .collect();
    futures_util::stream::iter(chunks)
}

fn dir_entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn assert_store_empty(data_dir: &TempDir) {
    for sub in ["tmp", "blobs", "releases"] {
        let left = dir_entries(&data_dir.path().join("bundles").join(sub));
        assert!(left.is_empty(), "bundles/{sub} still holds {left:?}");
    }
}

fn compress(tar: &[u8]) -> Vec<u8> {
    zstd::encode_all(tar, 1).unwrap()
}

fn pack(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    pack_dir(dir, &mut out, |_, _| {}).unwrap();
    out
}

/// Writes archives that honest packers refuse to produce, names and all, byte for byte.
struct RawTar(tar::Builder<Vec<u8>>);

impl RawTar {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }

    fn header(name: &[u8], kind: EntryType, size: u64, link: &[u8]) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_cksum();
        header
    }

    fn entry(mut self, name: &str, kind: EntryType, link: &str, data: &[u8]) -> Self {
        let header = Self::header(name.as_bytes(), kind, data.len() as u64, link.as_bytes());
        self.0.append(&header, data).unwrap();
        self
    }

    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, EntryType::Regular, "", data)
    }

    fn dir(self, name: &str) -> Self {
        self.entry(name, EntryType::Directory, "", b"")
    }

    fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name, EntryType::Symlink, target, b"")
    }

    fn hard_link(self, name: &str, target: &str) -> Self {
        self.entry(name, EntryType::Link, target, b"")
    }

    fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
        self.0
            .append_pax_extensions(records.iter().map(|(key, value)| (*key, *value)))
            .unwrap();
        self
    }

    fn finish(self) -> Vec<u8> {
        compress(&self.0.into_inner().unwrap())
    }
}

async fn unpack_bytes(
    store: &BundleStore,
    archive: &[u8],
) -> Result<(StagedBundle, UnpackedBundle), BundleError> {
    let staged = store.stage(body(archive)).await?;
    let unpacked = store.unpack(&staged)?;
    Ok((staged, unpacked))
}

/// Unpacks a hostile archive, expects a refusal, and checks nothing is left behind.
async fn refused_with(archive: Vec<u8>, limits: BundleLimits) -> BundleError {
    let (data_dir, store) = open_store(limits);
    let err = match unpack_bytes(&store, &archive).await {
        Ok((_, unpacked)) => panic!("unpacked to {:?}", unpacked.path()),
        Err(err) => err,
    };
    assert!(err.is_client_error(), "{err}");
    assert_store_empty(&data_dir);
    err
}

async fn refused(archive: Vec<u8>) -> BundleError {
    refused_with(archive, BundleLimits::default()).await
}

fn sample_app() -> TempDir {
    let dir = TempDir::new().unwrap();
    let root = dir.path();
    fs::write(root.join("shoal.toml"), "name = \"demo\"\n").unwrap();
    fs::create_dir_all(root.join("static/css")).unwrap();
    fs::write(root.join("static/css/site.css"), "body {}\n").unwrap();
    fs::write(root.join("run.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir(root.join("empty")).unwrap();
    symlink("static/css/site.css", root.join("style.css")).unwrap();
    fs::create_dir_all(root.join(".git/objects")).unwrap();
    fs::write(root.join(".git/HEAD"), "ref").unwrap();
    fs::create_dir(root.join("shoal-data")).unwrap();
    fs::write(root.join("shoal-data/db"), "state").unwrap();
    fs::create_dir(root.join("static/shoal-data")).unwrap();
    dir
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn pack_stage_unpack_commit_round_trip() {
    let app = sample_app();
    let mut archive = Vec::new();
    let mut last_progress = (0, 0);
    let summary = pack_dir(app.path(), &mut archive, |done, total| {
        last_progress = (done, total)
    })
    .unwrap();
    assert_eq!(
        summary,
        PackSummary {
            files: 3,
            bytes: 32
        }
    );
    assert_eq!(last_progress, (32, 32));

    let (data_dir, store) = open_store(BundleLimits::default());
    let (staged, unpacked) = unpack_bytes(&store, &archive).await.unwrap();
    assert_eq!(staged.digest(), hex::encode(Sha256::digest(&archive)));
    assert_eq!(staged.size(), archive.len() as u64);
    assert_eq!((unpacked.files(), unpacked.bytes()), (3, 32));
    let digest = staged.digest().to_owned();

    let release = store.commit(staged, unpacked).unwrap();
    assert_eq!(release, store.release_dir(&digest));
    assert_eq!(
        fs::read_to_string(release.join("shoal.toml")).unwrap(),
        "name = \"demo\"\n"
    );
    assert_eq!(
        fs::read_to_string(release.join("style.css")).unwrap(),
        "body {}\n"
    );
    assert_eq!(
        fs::read_link(release.join("style.css")).unwrap(),
        Path::new("static/css/site.css")
    );
    assert_eq!(mode_of(&release.join("shoal.toml")), 0o444);
    assert_eq!(mode_of(&release.join("run.sh")), 0o555);
    assert_eq!(mode_of(&release.join("static/css")), 0o555);
    assert_eq!(mode_of(&release), 0o555);
    assert!(release.join("empty").is_dir());
    assert!(release.join("static/shoal-data").is_dir());
    assert!(!release.join(".git").exists());
    assert!(!release.join("shoal-data").exists());

    assert!(store.contains(&digest));
    assert_eq!(store.digests().unwrap(), vec![digest.clone()]);
    assert_eq!(store.stored_bytes(), archive.len() as u64);
    assert!(dir_entries(&data_dir.path().join("bundles/tmp")).is_empty());

    store.remove(&digest).unwrap();
    assert!(!store.contains(&digest));
    assert_eq!(store.stored_bytes(), 0);
    assert_store_empty(&data_dir);
}

#[test]
fn packing_is_deterministic_whatever_the_mtimes_and_modes() {
    let app = sample_app();
    let first = pack(app.path());
    let later = SystemTime::now() + Duration::from_secs(3600);
    for name in ["shoal.toml", "static/css/site.css", "run.sh"] {
        let file = fs::File::options()
            .write(true)
            .open(app.path().join(name))
            .unwrap();
        file.set_modified(later).unwrap();
    }
    fs::set_permissions(
        app.path().join("shoal.toml"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::set_permissions(app.path().join("run.sh"), fs::Permissions::from_mode(0o711)).unwrap();
    let second = pack(app.path());
    assert_eq!(Sha256::digest(&first), Sha256::digest(&second));

    fs::write(app.path().join("shoal.toml"), "name = \"other\"\n").unwrap();
    assert_ne!(Sha256::digest(&first), Sha256::digest(pack(app.path())));
}

#[test]
fn packing_refuses_a_symlink_that_leaves_the_directory() {
    let app = sample_app();
    symlink("/etc/passwd", app.path().join("passwd")).unwrap();
    let err = pack_dir(app.path(), io::sink(), |_, _| {}).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bundle entry `passwd` links to `/etc/passwd`, which leaves the bundle"
    );
}

#[tokio::test]
async fn committing_the_same_content_twice_keeps_one_copy() {
    let app = sample_app();
    let archive = pack(app.path());
    let (data_dir, store) = open_store(BundleLimits::default());
    let mut releases = Vec::new();
    for _ in 0..2 {
        let (staged, unpacked) = unpack_bytes(&store, &archive).await.unwrap();
        releases.push(store.commit(staged, unpacked).unwrap());
    }
    assert_eq!(releases[0], releases[1]);
    assert_eq!(store.digests().unwrap().len(), 1);
    assert_eq!(store.stored_bytes(), archive.len() as u64);
    assert!(dir_entries(&data_dir.path().join("bundles/tmp")).is_empty());
    assert_eq!(
        dir_entries(&data_dir.path().join("bundles/releases")).len(),
        1
    );
    store.remove(&store.digests().unwrap()[0]).unwrap();
    assert_store_empty(&data_dir);
}

#[tokio::test]
async fn long_names_and_pax_names_unpack() {
    let long_dir = "d".repeat(120);
    let long_name = format!("{long_dir}/{}", "f".repeat(150));
    let app = TempDir::new().unwrap();
    fs::create_dir(app.path().join(&long_dir)).unwrap();
    fs::write(app.path().join(&long_name), "deep").unwrap();
    symlink(&long_name, app.path().join("link")).unwrap();
    let (_data_dir, store) = open_store(BundleLimits::default());
    let (_staged, unpacked) = unpack_bytes(&store, &pack(app.path())).await.unwrap();
    assert_eq!(
        fs::read_to_string(unpacked.path().join("link")).unwrap(),
        "deep"
    );

    let archive = RawTar::new()
        .pax(&[("path", b"pax-name.txt"), ("mtime", b"1")])
        .file("short", b"via pax")
        .finish();
    let (_staged, unpacked) = unpack_bytes(&store, &archive).await.unwrap();
    assert_eq!(dir_entries(unpacked.path()), vec!["pax-name.txt"]);
}

#[tokio::test]
async fn modes_are_tamed_and_late_directory_entries_are_accepted() {
    let mut header = RawTar::header(b"bin/tool", EntryType::Regular, 2, b"");
    header.set_mode(0o6777);
    header.set_cksum();
    let mut tar = RawTar::new().file("bin/plain", b"x");
    tar.0.append(&header, &b"#!"[..]).unwrap();
    let archive = tar.dir("bin").hard_link("tool-again", "bin/tool").finish();
    let (_data_dir, store) = open_store(BundleLimits::default());
    let (_staged, unpacked) = unpack_bytes(&store, &archive).await.unwrap();
    assert_eq!(mode_of(&unpacked.path().join("bin/tool")), 0o755);
    assert_eq!(mode_of(&unpacked.path().join("bin/plain")), 0o644);
    assert_eq!(fs::read(unpacked.path().join("tool-again")).unwrap(), b"#!");
    assert_eq!((unpacked.files(), unpacked.bytes()), (3, 3));
}

#[tokio::test]
async fn dropping_uncommitted_bundles_deletes_them() {
    let (data_dir, store) = open_store(BundleLimits::default());
    let app = sample_app();
    let (staged, unpacked) = unpack_bytes(&store, &pack(app.path())).await.unwrap();
    assert_eq!(dir_entries(&data_dir.path().join("bundles/tmp")).len(), 2);
    drop(unpacked);
    drop(staged);
    assert_store_empty(&data_dir);
}

#[tokio::test]
async fn parent_escapes_are_refused() {
    let err = refused(RawTar::new().file("../x", b"x").finish()).await;
    assert_eq!(err.to_string(), "bundle entry `../x` leaves the bundle");
    let err = refused(RawTar::new().file("a/../../x", b"x").finish()).await;
    assert!(matches!(err, BundleError::PathEscapes { .. }), "{err}");
}

#[tokio::test]
async fn absolute_and_odd_names_are_refused() {
    let err = refused(RawTar::new().file("/etc/x", b"x").finish()).await;
    assert!(matches!(err, BundleError::AbsolutePath { .. }), "{err}");
    let err = refused(RawTar::new().file("C:/x", b"x").finish()).await;
    assert!(matches!(err, BundleError::AbsolutePath { .. }), "{err}");
    let err = refused(RawTar::new().file("a\\b", b"x").finish()).await;
    assert!(matches!(err, BundleError::BadName { .. }), "{err}");
    let err = refused(RawTar::new().file("", b"x").finish()).await;
    assert!(matches!(err, BundleError::EmptyPath), "{err}");
}

#[tokio::test]
async fn symlinks_leaving_the_bundle_are_refused() {
    let err = refused(RawTar::new().symlink("passwd", "/etc/passwd").finish()).await;
    assert_eq!(
        err.to_string(),
        "bundle entry `passwd` links to `/etc/passwd`, which leaves the bundle"
    );
    let err = refused(RawTar::new().symlink("a", "../..").finish()).await;
    assert!(matches!(err, BundleError::LinkEscapes { .. }), "{err}");
    let err = refused(RawTar::new().symlink("sub/a", "../../x").finish()).await;
    assert!(matches!(err, BundleError::LinkEscapes { .. }), "{err}");
    // `d/..` reads as the root, but climbs out when `d` is itself a link to `.`.
    let archive = RawTar::new()
        .symlink("d", ".")
        .symlink("e", "d/..")
        .finish();
    let err = refused(archive).await;
    assert!(matches!(err, BundleError::LinkUnsupported { .. }), "{err}");
}

#[tokio::test]
async fn symlinks_inside_the_bundle_are_kept() {
    let archive = RawTar::new()
        .file("sub/file", b"x")
        .symlink("sub/up", "../top")
        .symlink("top", "sub/file")
        .finish();
    let (_data_dir, store) = open_store(BundleLimits::default());
    let (_staged, unpacked) = unpack_bytes(&store, &archive).await.unwrap();
    assert_eq!(fs::read(unpacked.path().join("sub/up")).unwrap(), b"x");
}

#[tokio::test]
async fn writing_through_a_symlink_is_refused() {
    let outside = TempDir::new().unwrap();
    let target = outside.path().to_str().unwrap().to_owned();
    let archive = RawTar::new()
        .symlink("d", &target)
        .file("d/pwned", b"x")
        .finish();
    let err = refused(archive).await;
    assert!(matches!(err, BundleError::LinkEscapes { .. }), "{err}");
    assert!(dir_entries(outside.path()).is_empty());

    let archive = RawTar::new()
        .dir("real")
        .symlink("d", "real")
        .file("d/x", b"x")
        .finish();
    let err = refused(archive).await;
    assert_eq!(
        err.to_string(),
        "bundle entry `d/x` goes through the symlink `d`; entries may not be written through links"
    );
}

#[tokio::test]
async fn hard_links_must_name_an_earlier_file() {
    let err = refused(RawTar::new().hard_link("h", "../x").finish()).await;
    assert!(matches!(err, BundleError::LinkEscapes { .. }), "{err}");
    let err = refused(RawTar::new().hard_link("h", "/etc/shadow").finish()).await;
    assert!(matches!(err, BundleError::LinkEscapes { .. }), "{err}");
    let archive = RawTar::new().dir("d").hard_link("h", "d").finish();
    let err = refused(archive).await;
    assert!(matches!(err, BundleError::HardLinkTarget { .. }), "{err}");
}

#[tokio::test]
async fn devices_and_fifos_are_refused() {
    let err = refused(
        RawTar::new()
            .entry("dev/null", EntryType::Char, "", b"")
            .finish(),
    )
    .await;
    assert_eq!(
        err.to_string(),
        "bundle entry `dev/null` is a device file; only files, directories and links inside the bundle are allowed"
    );
    let err = refused(
        RawTar::new()
            .entry("sda", EntryType::Block, "", b"")
            .finish(),
    )
    .await;
    assert!(matches!(err, BundleError::SpecialFile { .. }), "{err}");
    let err = refused(
        RawTar::new()
            .entry("pipe", EntryType::Fifo, "", b"")
            .finish(),
    )
    .await;
    assert!(
        matches!(err, BundleError::SpecialFile { kind: "FIFO", .. }),
        "{err}"
    );
}

#[tokio::test]
async fn duplicates_and_files_as_parents_are_refused() {
    let err = refused(RawTar::new().file("a", b"1").file("a", b"2").finish()).await;
    assert_eq!(err.to_string(), "bundle entry `a` appears more than once");
    let err = refused(RawTar::new().file("a", b"1").file("a/b", b"2").finish()).await;
    assert!(
        matches!(err, BundleError::ParentNotDirectory { .. }),
        "{err}"
    );
    let err = refused(RawTar::new().file("a/b", b"1").file("a", b"2").finish()).await;
    assert!(matches!(err, BundleError::Duplicate { .. }), "{err}");
}

#[tokio::test]
async fn too_many_entries_are_refused() {
    let limits = BundleLimits {
        max_files: 3,
        ..BundleLimits::default()
    };
    let archive = RawTar::new()
        .file("a", b"")
        .file("b", b"")
        .file("c/d", b"")
        .finish();
    let err = refused_with(archive, limits).await;
    assert_eq!(
        err.to_string(),
        "bundle holds more than 3 entries (--bundle-max-files)"
    );
}

#[tokio::test]
async fn too_many_declared_bytes_are_refused() {
    let limits = BundleLimits {
        max_unpacked_bytes: 1024,
        ..BundleLimits::default()
    };
    let archive = RawTar::new()
        .file("a", &[1; 600])
        .file("b", &[2; 600])
        .finish();
    let err = refused_with(archive, limits).await;
    assert_eq!(
        err.to_string(),
        "bundle unpacks to more than 1 KiB (--bundle-max-unpacked-bytes)"
    );
}

/// 300 MB of zeros hidden as the data of a directory entry, whose size no unpacker writes out:
/// only counting what leaves the decompressor catches it.
#[tokio::test]
async fn decompression_bombs_are_cut_off() {
    let zeros = 300 * 1000 * 1000;
    let mut builder = tar::Builder::new(zstd::Encoder::new(Vec::new(), 1).unwrap());
    let header = RawTar::header(b"bomb/", EntryType::Directory, zeros, b"");
    builder.append(&header, io::repeat(0).take(zeros)).unwrap();
    let archive = builder.into_inner().unwrap().finish().unwrap();
    assert!(archive.len() < MIB as usize);
    let limits = BundleLimits {
        max_unpacked_bytes: 64 * MIB,
        max_files: 100,
        ..BundleLimits::default()
    };
    let err = refused_with(archive, limits).await;
    assert!(
        matches!(err, BundleError::TooManyBytesUnpacked { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn oversized_uploads_are_refused_while_staging() {
    let limits = BundleLimits {
        max_compressed_bytes: 40 * KIB,
        ..BundleLimits::default()
    };
    let (data_dir, store) = open_store(limits);
    let err = store.stage(body(&[7; 100 * 1024])).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "bundle is larger than the 40 KiB limit (--bundle-max-bytes)"
    );
    assert_store_empty(&data_dir);
}

#[tokio::test]
async fn a_failed_upload_stream_leaves_nothing() {
    let (data_dir, store) = open_store(BundleLimits::default());
    let chunks = vec![Ok(Bytes::from_static(b"partial")), Err("connection reset")];
    let err = store
        .stage(futures_util::stream::iter(chunks))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "bundle upload failed: connection reset");
    assert_store_empty(&data_dir);
}

#[tokio::test]
async fn garbage_and_malformed_archives_are_refused() {
    let err = refused(b"this is not zstd at all".to_vec()).await;
    assert!(matches!(err, BundleError::InvalidArchive(_)), "{err}");
    assert!(err
        .to_string()
        .starts_with("bundle is not a valid tar.zst archive: "));
    let err = refused(compress(&[0x41; 2048])).await;
    assert!(matches!(err, BundleError::InvalidArchive(_)), "{err}");
    let err = refused(Vec::new()).await;
    assert!(matches!(err, BundleError::InvalidArchive(_)), "{err}");
    let mut truncated = RawTar::new().file("a", &[9; 5000]).finish();
    truncated.truncate(truncated.len() / 2);
    let err = refused(truncated).await;
    assert!(matches!(err, BundleError::InvalidArchive(_)), "{err}");
    let err = refused(RawTar::new().pax(&[("size", b"1")]).file("a", b"").finish()).await;
    assert!(matches!(err, BundleError::InvalidArchive(_)), "{err}");
}

#[test]
fn open_wipes_staging_and_drops_releases_without_blobs() {
    let data_dir = TempDir::new().unwrap();
    let root = data_dir.path().join("bundles");
    drop(BundleStore::open(&root, BundleLimits::default()).unwrap());
    let stale = root.join("tmp/unpack-stale/sub");
    fs::create_dir_all(&stale).unwrap();
    fs::set_permissions(&stale, fs::Permissions::from_mode(0o555)).unwrap();
    fs::create_dir_all(root.join("releases").join(DIGEST_A)).unwrap();
    let store = BundleStore::open(&root, BundleLimits::default()).unwrap();
    assert!(!store.contains(DIGEST_A));
    assert_store_empty(&data_dir);
}

#[test]
fn digests_are_checked_before_touching_paths() {
    let (_data_dir, store) = open_store(BundleLimits::default());
    assert!(!store.contains("../../etc"));
    let err = store.remove("../../etc").unwrap_err();
    assert!(matches!(err, BundleError::InvalidDigest(_)), "{err}");
    assert!(is_valid_digest(DIGEST_A));
    assert!(!is_valid_digest(&DIGEST_A.to_uppercase()));
    store.remove(DIGEST_A).unwrap();
}

#[test]
fn errors_name_their_cause() {
    let limit = BundleError::TooLarge {
        limit: BundleLimits::default().max_compressed_bytes,
    };
    assert_eq!(
        limit.to_string(),
        "bundle is larger than the 256 MiB limit (--bundle-max-bytes)"
    );
    assert!(limit.is_client_error());
    let disk = BundleError::Io(io::Error::other("disk full"));
    assert!(!disk.is_client_error());
    assert_eq!(format_bytes(GIB + GIB / 2), "1.5 GiB");
    assert_eq!(format_bytes(12), "12 bytes");
    let shown = show_bytes(&[b'a'; 1000]);
    assert!(shown.chars().count() <= MAX_SHOWN_NAME_CHARS + 1);
    assert_eq!(show_bytes(b"a\nb"), "a\\nb");
}
