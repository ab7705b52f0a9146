//! Hostile bundles sent straight to the admin API: each is refused with a 4xx and a message
//! that names the problem, and leaves nothing behind on the node.

use std::path::Path;

use reqwest::StatusCode;
use shoal_tests::{bundle_of, http_client, TestNode};

const MANIFEST: &[u8] = b"name = \"evil\"\nkind = \"static\"\n";

/// One tar entry written by hand, so names and types the `tar` crate refuses can be made.
struct RawEntry<'a> {
    name: &'a str,
    kind: tar::EntryType,
    link: &'a str,
    data: &'a [u8],
}

fn entry<'a>(name: &'a str, data: &'a [u8]) -> RawEntry<'a> {
    RawEntry {
        name,
        kind: tar::EntryType::Regular,
        link: "",
        data,
    }
}

fn special<'a>(name: &'a str, kind: tar::EntryType, link: &'a str) -> RawEntry<'a> {
    RawEntry {
        name,
        kind,
        link,
        data: b"",
    }
}

fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let mut header = tar::Header::new_old();
        {
            let old = header.as_old_mut();
            old.name[..entry.name.len()].copy_from_slice(entry.name.as_bytes());
            old.linkname[..entry.link.len()].copy_from_slice(entry.link.as_bytes());
        }
        header.set_mode(0o644);
        header.set_size(entry.data.len() as u64);
        header.set_entry_type(entry.kind);
        header.set_mtime(0);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(entry.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn zst(tar: &[u8]) -> Vec<u8> {
    zstd::encode_all(tar, 3).unwrap()
}

/// A tar holding one file of `size` zeros, compressed while it is generated.
fn zero_bomb(size: u64) -> Vec<u8> {
    let mut encoder = zstd::Encoder::new(Vec::new(), 3).unwrap();
    let mut builder = tar::Builder::new(&mut encoder);
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(
            &mut header,
            "zeros.bin",
            std::io::repeat(0).take_exactly(size),
        )
        .unwrap();
    builder.into_inner().unwrap();
    encoder.finish().unwrap()
}

trait TakeExactly: std::io::Read + Sized {
    fn take_exactly(self, n: u64) -> std::io::Take<Self> {
        self.take(n)
    }
}
impl<R: std::io::Read> TakeExactly for R {}

fn entries_under(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| entries.count())
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_bundles_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start_with(
        &dir.path().join("data"),
        &[
            "--bundle-max-bytes",
            "256KiB",
            "--bundle-max-unpacked-bytes",
            "1MiB",
            "--bundle-max-files",
            "50",
        ],
    );
    let many_files: Vec<(String, Vec<u8>)> = (0..60)
        .map(|i| (format!("f{i}.txt"), b"x".to_vec()))
        .collect();
    let mut many: Vec<(&str, &[u8])> = vec![("shoal.toml", MANIFEST)];
    many.extend(many_files.iter().map(|(n, d)| (n.as_str(), d.as_slice())));
    let big_file = vec![7u8; 2 * 1024 * 1024];
    let random: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();

    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "dot-dot path",
            zst(&raw_tar(&[
                entry("shoal.toml", MANIFEST),
                entry("../escape.txt", b"x"),
            ])),
            StatusCode::BAD_REQUEST,
            "leaves the bundle",
        ),
        (
            "nested dot-dot",
            zst(&raw_tar(&[
                entry("shoal.toml", MANIFEST),
                entry("a/../../escape.txt", b"x"),
            ])),
            StatusCode::BAD_REQUEST,
            "leaves the bundle",
        ),
        (
            "absolute path",
            zst(&raw_tar(&[
                entry("shoal.toml", MANIFEST),
                entry("/tmp/shoal-evil.txt", b"x"),
            ])),
            StatusCode::BAD_REQUEST,
            "absolute",
        ),
        (
            "symlink out",
            zst(&raw_tar(&[
                entry("shoal.toml", MANIFEST),
                special("passwd", tar::EntryType::Symlink, "/etc/passwd"),
            ])),
            StatusCode::BAD_REQUEST,
            "passwd",
        ),
        (
            "relative symlink out",
            zst(&raw_tar(&[
                entry("shoal.toml", MANIFEST),
                special("up", tar::EntryType::Symlink, "../../.."),
            ])),
            StatusCode::BAD_REQUEST,
            "leaves the bundle",
        ),
        (
            "write through symlink",
            zst(&raw_tar(&[
                entry("shoal.toml", MANIFEST),
                special("d", tar::EntryType::Symlink, "."),
                entry("d/x.txt", b"x"),
            ])),
            StatusCode::BAD_REQUEST,
            "symlink",
        ),
        (
            "hard link out",
            zst(&raw_tar(&[
                entry("shoal.toml", MANIFEST),
                special("h", tar::EntryType::Link, "../../etc/passwd"),
            ])),
            StatusCode::BAD_REQUEST,
            "leaves the bundle",
        ),
        (
            "char device",
            zst(&raw_tar(&[
                entry("shoal.toml", MANIFEST),
                special("null", tar::EntryType::Char, ""),
            ])),
            StatusCode::BAD_REQUEST,
            "device",
        ),
        (
            "fifo",
            zst(&raw_tar(&[
                entry("shoal.toml", MANIFEST),
                special("pipe", tar::EntryType::Fifo, ""),
            ])),
            StatusCode::BAD_REQUEST,
            "only files, directories and links",
        ),
        (
            "too many files",
            bundle_of(&many),
            StatusCode::BAD_REQUEST,
            "more than 50 entries",
        ),
        (
            "too many bytes",
            bundle_of(&[("shoal.toml", MANIFEST), ("big.bin", &big_file)]),
            StatusCode::BAD_REQUEST,
            "unpacks to more than",
        ),
        (
            "decompression bomb",
            zero_bomb(256 * 1024 * 1024),
            StatusCode::BAD_REQUEST,
            "unpacks to more than",
        ),
        (
            "oversized upload",
            random,
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than",
        ),
        (
            "not an archive",
            b"definitely not zstd".to_vec(),
            StatusCode::BAD_REQUEST,
            "not a valid tar.zst",
        ),
        (
            "no manifest",
            bundle_of(&[("index.html", b"hi")]),
            StatusCode::BAD_REQUEST,
            "shoal.toml",
        ),
        (
            "unknown manifest field",
            bundle_of(&[(
                "shoal.toml",
                b"name = \"evil\"\nkind = \"static\"\nportt = 1\n",
            )]),
            StatusCode::BAD_REQUEST,
            "unknown field `portt`",
        ),
    ];

    let client = http_client();
    let bundles = node.data_dir.join("bundles");
    for (case, body, status, message) in cases {
        assert!(
            body.len() < 64 * 1024 * 1024,
            "{case} stays small on the wire"
        );
        let response = client
            .post(node.api_url("/v1/apps"))
            .bearer_auth(&node.token)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{case}");
        let error: serde_json::Value = response.json().await.unwrap();
        let error = error["error"].as_str().unwrap_or_default().to_owned();
        assert!(
            error.contains(message),
            "{case}: `{error}` should mention `{message}`"
        );
        for sub in ["tmp", "blobs", "releases"] {
            assert_eq!(
                entries_under(&bundles.join(sub)),
                0,
                "{case} left something in bundles/{sub}"
            );
        }
    }
    assert!(!Path::new("/tmp/shoal-evil.txt").exists());
    let apps: serde_json::Value = client
        .get(node.api_url("/v1/apps"))
        .bearer_auth(&node.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        apps["apps"],
        serde_json::json!([]),
        "no hostile bundle became an app"
    );

    // The node is unharmed: a good bundle still deploys and serves.
    let good = bundle_of(&[("shoal.toml", MANIFEST), ("index.html", b"fine")]);
    let response = client
        .post(node.api_url("/v1/apps"))
        .bearer_auth(&node.token)
        .body(good)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let page = client
        .get(node.url("/apps/evil/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(page, "fine");
}
