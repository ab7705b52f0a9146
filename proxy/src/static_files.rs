//! Serving a static app's release directory: index files, directory redirects, content types,
//! revalidation (ETag, Last-Modified), byte ranges, precompressed `.gz` siblings and SPA fallback.
//!
//! A release directory is read-only and content-addressed: a path inside a given release always
//! holds the same bytes. Validators therefore derive from the release id and the path instead of
//! hashing file contents. This module sees paths relative to the app root only; serving under a
//! path prefix is the rewriter's business.
//!
//! All of a request's filesystem work (path lookup, metadata, open, HTML charset sniffing, and the
//! read itself for small files) runs in one hop to the blocking pool: each hop costs a thread
//! wake-up and a task switch, which used to cost more than the file system calls. Larger files
//! stream from the handle opened in that hop.

use std::fs::Metadata;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use httpdate::HttpDate;
use mime_guess::Mime;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use crate::body::{self, Body, BoxError};

#[path = "static_files_http.rs"]
mod rules;

use self::rules::{
    accepts_gzip, content_type, is_html, is_not_modified, precondition_headers, requested_range,
    sniff_html_charset, ByteRange,
};

/// How one static app is served; from the app's shoal.toml.
#[derive(Clone, Debug, Default)]
pub struct StaticOptions {
    /// File served (200) for GET/HEAD paths that match no file, e.g. "index.html", for single-page apps.
    pub spa_fallback: Option<String>,
    /// `max-age` in seconds for non-HTML assets; None means `no-cache` (always revalidate with the ETag).
    pub asset_max_age: Option<u32>,
}

/// The app's own configuration sits at the release root and is never served.
const CONFIG_FILE: &str = "shoal.toml";
/// Tried in order inside a directory requested with a trailing slash.
const INDEX_FILES: [&str; 2] = ["index.html", "index.htm"];
/// Longer path segments would fail with ENAMETOOLONG; refusing them up front keeps that a 404.
const MAX_SEGMENT_BYTES: usize = 255;
/// How much of an HTML file is searched for a `<meta>` charset, as browsers do.
const CHARSET_SNIFF_BYTES: u64 = 1024;
/// Files up to this size are read whole in the lookup's blocking hop and sent from memory, so
/// they cost no further hop; larger ones stream, one blocking-pool hop per chunk.
const WHOLE_READ_BYTES: u64 = 64 * 1024;
/// Read size for streamed bodies: large enough to keep syscalls per megabyte low.
const CHUNK_BYTES: usize = 64 * 1024;
/// Hex digits of the SHA-256 kept in an ETag; 80 bits is plenty to tell paths apart.
const ETAG_HEX_DIGITS: usize = 20;
/// `httpdate` panics outside 1970..=9999, so later modification times are not advertised.
const LAST_HTTP_DATE_SECS: u64 = 253_402_300_799;
/// Characters escaped when a path segment is written back into a `Location`.
const SEGMENT_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Serves `path` (the request path relative to the app root, starting with "/", still percent-encoded, no
/// query) from `root`, whose content never changes for `release_id` (use it in ETags).
pub async fn serve(
    root: &Path,
    release_id: &str,
    path: &str,
    request: &http::request::Parts,
    options: &StaticOptions,
) -> Response<Body> {
    if request.method != Method::GET && request.method != Method::HEAD {
        return method_not_allowed();
    }
    match serve_checked(root, release_id, path, request, options).await {
        Ok(response) => response,
        Err(error) => {
            tracing::error!(root = %root.display(), path, error = %error, "static file failed");
            plain_text(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

async fn serve_checked(
    root: &Path,
    release_id: &str,
    path: &str,
    request: &http::request::Parts,
    options: &StaticOptions,
) -> io::Result<Response<Body>> {
    let Some(request_path) = RequestPath::parse(path) else {
        return Ok(not_found());
    };
    let file_request = FileRequest {
        root: root.to_path_buf(),
        request_path,
        release_id: release_id.to_owned(),
        options: options.clone(),
        accepts_gzip: accepts_gzip(&request.headers),
        head: request.method == Method::HEAD,
        preconditions: precondition_headers(&request.headers),
    };
    tokio::task::spawn_blocking(move || file_request.respond())
        .await
        .map_err(io::Error::other)?
}

/// A request path, decoded, with every segment safe to join onto the root.
struct RequestPath {
    /// The segments joined with '/', without empty or "." ones; empty for the root.
    relative: String,
    trailing_slash: bool,
}

impl RequestPath {
    fn parse(raw: &str) -> Option<Self> {
        let decoded = percent_decode_str(raw).decode_utf8().ok()?;
        Some(Self {
            relative: safe_relative(&decoded)?,
            trailing_slash: decoded.ends_with('/'),
        })
    }

    /// Built from the decoded segments, not echoed from the request: `//evil.example` must not
    /// become a protocol-relative redirect.
    fn directory_location(&self) -> String {
        let mut location = String::from("/");
        for segment in self
            .relative
            .split('/')
            .filter(|segment| !segment.is_empty())
        {
            location.extend(utf8_percent_encode(segment, SEGMENT_ESCAPES));
            location.push('/');
        }
        location
    }
}

/// Joins a decoded path's segments with '/', or `None` when the path tries to leave where it is
/// joined. Splitting after decoding is deliberate: `%2F..%2F` must count as a `..` segment.
fn safe_relative(decoded: &str) -> Option<String> {
    if decoded.contains(['\0', '\\']) {
        return None;
    }
    let mut relative = String::with_capacity(decoded.len());
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => return None,
            long if long.len() > MAX_SEGMENT_BYTES => return None,
            segment => {
                if !relative.is_empty() {
                    relative.push('/');
                }
                relative.push_str(segment);
            }
        }
    }
    Some(relative)
}

/// Where an entry was found under the release root.
struct Found {
    /// The path joined from the root, or the canonical path when a symlink was followed.
    path: PathBuf,
    /// No symlink lies between the root and `path`, so an entry beside or inside it is in the
    /// root unless its own last component is a symlink.
    plain: bool,
}

/// What the filesystem holds at a path relative to the release root.
enum Entry {
    File(Found, Metadata),
    Directory(Found),
    Missing,
    /// Exists but must not be served: outside the root after following symlinks, or the config.
    Refused,
}

/// The release directory. Paths are joined onto it from checked segments, so only a symlink on
/// the way can lead out of it. The bundle store admits no symlink that leaves the bundle; as a
/// second line of defence, a path with a symlink on it is canonicalized and checked, while the
/// common path without one costs one `lstat` per segment and no `readlink`.
struct Release<'a> {
    root: &'a Path,
}

impl Release<'_> {
    /// Looks up `relative` (checked segments joined with '/'; empty for the root itself).
    fn entry(&self, relative: &str) -> io::Result<Entry> {
        let mut path = self.root.to_path_buf();
        if relative.is_empty() {
            return Ok(Entry::Directory(Found { path, plain: true }));
        }
        let (directories, name) = relative.rsplit_once('/').unwrap_or(("", relative));
        for segment in directories.split('/').filter(|segment| !segment.is_empty()) {
            path.push(segment);
            match symlink_metadata_if_present(&path)? {
                Some(metadata) if metadata.is_symlink() => {
                    return self.entry_through_symlinks(relative)
                }
                Some(metadata) if metadata.is_dir() => {}
                _ => return Ok(Entry::Missing),
            }
        }
        path.push(name);
        self.last_component(relative, path)
    }

    /// Looks up `relative` at `path`, which lies beside or inside `known`.
    fn entry_near(&self, known: &Found, relative: &str, path: PathBuf) -> io::Result<Entry> {
        if known.plain {
            self.last_component(relative, path)
        } else {
            self.entry_through_symlinks(relative)
        }
    }

    /// `path` is `relative` joined onto the root, and its parent is a directory in the root
    /// reached without symlinks.
    fn last_component(&self, relative: &str, path: PathBuf) -> io::Result<Entry> {
        let Some(metadata) = symlink_metadata_if_present(&path)? else {
            return Ok(Entry::Missing);
        };
        if metadata.is_symlink() {
            return self.entry_through_symlinks(relative);
        }
        if relative == CONFIG_FILE {
            return Ok(Entry::Refused);
        }
        Ok(classify(Found { path, plain: true }, metadata))
    }

    /// The thorough check, kept for the rare path with a symlink on it: the fully resolved path
    /// must still be inside the root and must not be its config.
    fn entry_through_symlinks(&self, relative: &str) -> io::Result<Entry> {
        let canonical = match std::fs::canonicalize(self.root.join(relative)) {
            Ok(canonical) => canonical,
            Err(error) if is_missing(&error) => return Ok(Entry::Missing),
            Err(error) => return Err(error),
        };
        let root = std::fs::canonicalize(self.root)?;
        if !canonical.starts_with(&root) || canonical == root.join(CONFIG_FILE) {
            return Ok(Entry::Refused);
        }
        let metadata = std::fs::metadata(&canonical)?;
        let found = Found {
            path: canonical,
            plain: false,
        };
        Ok(classify(found, metadata))
    }
}

fn classify(found: Found, metadata: Metadata) -> Entry {
    if metadata.is_dir() {
        Entry::Directory(found)
    } else if metadata.is_file() {
        Entry::File(found, metadata)
    } else {
        Entry::Missing
    }
}

/// `symlink_metadata`, with an absent entry as `None`.
fn symlink_metadata_if_present(path: &Path) -> io::Result<Option<Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) => Ok(Some(metadata)),
        Err(error) if is_missing(&error) => Ok(None),
        Err(error) => Err(error),
    }
}

fn is_missing(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Everything one request needs, owned so that it can move to the blocking pool.
struct FileRequest {
    root: PathBuf,
    request_path: RequestPath,
    release_id: String,
    options: StaticOptions,
    accepts_gzip: bool,
    /// HEAD gets the headers a GET would, so the file is looked up but never read.
    head: bool,
    /// See [`rules::precondition_headers`].
    preconditions: HeaderMap,
}

/// The outcome of path resolution.
enum Located {
    File(FileChoice),
    Redirect(String),
    Missing,
    Refused,
}

/// The file chosen for a response, and which of its variants is sent.
struct FileChoice {
    /// Path relative to the root after index and fallback resolution; names the representation.
    relative: String,
    /// The uncompressed file, which HTML charset sniffing reads even when the `.gz` is sent.
    identity_path: PathBuf,
    /// The `.gz` sibling when it is sent instead: it exists and the client accepts gzip.
    gzip_path: Option<PathBuf>,
    /// Of the variant sent.
    modified: Option<SystemTime>,
    /// Of the variant sent, as the lookup saw it.
    length: u64,
    has_gzip_sibling: bool,
}

impl FileChoice {
    fn gzip(&self) -> bool {
        self.gzip_path.is_some()
    }

    fn served_path(&self) -> &Path {
        self.gzip_path.as_deref().unwrap_or(&self.identity_path)
    }
}

impl FileRequest {
    /// The whole response, built on the blocking pool.
    fn respond(self) -> io::Result<Response<Body>> {
        let response = match self.locate()? {
            Located::File(choice) => return self.respond_with_file(choice),
            Located::Missing | Located::Refused => not_found(),
            Located::Redirect(location) => redirect(&location),
        };
        // Lookups never look at the root itself, so a root that is gone looks like an empty
        // release; that is the operator's problem (500), not a missing page (404).
        std::fs::metadata(&self.root)?;
        Ok(response)
    }

    fn locate(&self) -> io::Result<Located> {
        let release = Release { root: &self.root };
        let relative = &self.request_path.relative;
        let trailing_slash = self.request_path.trailing_slash;
        match release.entry(relative)? {
            Entry::Refused => return Ok(Located::Refused),
            Entry::File(file, metadata) if !trailing_slash => {
                return self.choose_variant(&release, relative.clone(), file, metadata);
            }
            Entry::Directory(_) if !trailing_slash => {
                return Ok(Located::Redirect(self.request_path.directory_location()));
            }
            Entry::Directory(directory) => {
                for index in INDEX_FILES {
                    let index_relative = join_relative(relative, index);
                    let index_path = directory.path.join(index);
                    let entry = release.entry_near(&directory, &index_relative, index_path)?;
                    if let Entry::File(file, metadata) = entry {
                        return self.choose_variant(&release, index_relative, file, metadata);
                    }
                }
            }
            Entry::File(..) | Entry::Missing => {}
        }
        self.locate_fallback(&release)
    }

    fn locate_fallback(&self, release: &Release) -> io::Result<Located> {
        let Some(fallback) = &self.options.spa_fallback else {
            return Ok(Located::Missing);
        };
        let Some(relative) = safe_relative(fallback) else {
            tracing::warn!(fallback = %fallback, "spa fallback path refused");
            return Ok(Located::Missing);
        };
        match release.entry(&relative)? {
            Entry::File(file, metadata) => self.choose_variant(release, relative, file, metadata),
            _ => Ok(Located::Missing),
        }
    }

    fn choose_variant(
        &self,
        release: &Release,
        relative: String,
        identity: Found,
        identity_metadata: Metadata,
    ) -> io::Result<Located> {
        let mut gzip_path = identity.path.clone().into_os_string();
        gzip_path.push(".gz");
        let gzip_relative = format!("{relative}.gz");
        let gzip_sibling = match release.entry_near(&identity, &gzip_relative, gzip_path.into())? {
            Entry::File(found, metadata) => Some((found.path, metadata)),
            _ => None,
        };
        let has_gzip_sibling = gzip_sibling.is_some();
        let (gzip_path, metadata) = match gzip_sibling {
            Some((path, metadata)) if self.accepts_gzip => (Some(path), metadata),
            _ => (None, identity_metadata),
        };
        Ok(Located::File(FileChoice {
            relative,
            identity_path: identity.path,
            gzip_path,
            modified: metadata.modified().ok(),
            length: metadata.len(),
            has_gzip_sibling,
        }))
    }
}

fn join_relative(directory: &str, name: &str) -> String {
    if directory.is_empty() {
        name.to_owned()
    } else {
        format!("{directory}/{name}")
    }
}

/// Headers every response about a file carries, 304 and 416 included.
struct Representation {
    etag: String,
    last_modified: Option<HttpDate>,
    cache_control: String,
    vary: bool,
}

impl Representation {
    fn new(choice: &FileChoice, release_id: &str, mime: &Mime, options: &StaticOptions) -> Self {
        let cache_control = match options.asset_max_age {
            Some(max_age) if !is_html(mime) => format!("public, max-age={max_age}"),
            _ => "no-cache".to_owned(),
        };
        Self {
            etag: etag(release_id, &choice.relative, choice.gzip()),
            last_modified: choice.modified.and_then(http_date),
            cache_control,
            vary: choice.has_gzip_sibling,
        }
    }

    fn response(&self, status: StatusCode, body: Body) -> Response<Body> {
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        insert(headers, header::ETAG, &self.etag);
        if let Some(last_modified) = self.last_modified {
            insert(headers, header::LAST_MODIFIED, &last_modified.to_string());
        }
        insert(headers, header::CACHE_CONTROL, &self.cache_control);
        if self.vary {
            insert(headers, header::VARY, "Accept-Encoding");
        }
        response
    }
}

fn etag(release_id: &str, relative: &str, gzip: bool) -> String {
    let mut hasher = Sha256::new();
    hasher.update(release_id.as_bytes());
    hasher.update([0]);
    hasher.update(relative.as_bytes());
    let digest = hex::encode(hasher.finalize());
    let suffix = if gzip { "-gz" } else { "" };
    format!("\"{}{suffix}\"", &digest[..ETAG_HEX_DIGITS])
}

fn http_date(time: SystemTime) -> Option<HttpDate> {
    let since_epoch = time.duration_since(UNIX_EPOCH).ok()?;
    // HTTP dates have whole seconds; truncating here makes comparisons with request dates exact.
    let whole_seconds = since_epoch.as_secs();
    (whole_seconds <= LAST_HTTP_DATE_SECS)
        .then(|| HttpDate::from(UNIX_EPOCH + Duration::from_secs(whole_seconds)))
}

impl FileRequest {
    fn respond_with_file(&self, choice: FileChoice) -> io::Result<Response<Body>> {
        let mime = mime_guess::from_path(&choice.relative).first_or_octet_stream();
        let representation = Representation::new(&choice, &self.release_id, &mime, &self.options);
        if is_not_modified(&self.preconditions, &representation) {
            return Ok(representation.response(StatusCode::NOT_MODIFIED, body::empty()));
        }
        let opened = open_choice(&choice, is_html(&mime), !self.head)?;
        let range = if !self.head && !choice.gzip() {
            requested_range(&self.preconditions, &representation, opened.length)
        } else {
            ByteRange::Full
        };
        let (status, start, length) = match range {
            ByteRange::Full => (StatusCode::OK, 0, opened.length),
            ByteRange::Partial { start, end } => {
                (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
            }
            ByteRange::Unsatisfiable => {
                return Ok(range_not_satisfiable(&representation, opened.length))
            }
        };
        let body = opened.content.into_body(start, length)?;
        let mut response = representation.response(status, body);
        let headers = response.headers_mut();
        let content_type = content_type(&mime, opened.html_charset.as_deref());
        insert(headers, header::CONTENT_TYPE, &content_type);
        insert(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        if choice.gzip() {
            insert(headers, header::CONTENT_ENCODING, "gzip");
        } else {
            insert(headers, header::ACCEPT_RANGES, "bytes");
        }
        if status == StatusCode::PARTIAL_CONTENT {
            let content_range = format!("bytes {start}-{}/{}", start + length - 1, opened.length);
            insert(headers, header::CONTENT_RANGE, &content_range);
        }
        Ok(response)
    }
}

fn range_not_satisfiable(representation: &Representation, length: u64) -> Response<Body> {
    let mut response = representation.response(StatusCode::RANGE_NOT_SATISFIABLE, body::empty());
    let headers = response.headers_mut();
    insert(headers, header::CONTENT_RANGE, &format!("bytes */{length}"));
    insert(headers, header::ACCEPT_RANGES, "bytes");
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    response
}

/// The served variant, opened, with what was learned while opening it.
struct OpenedFile {
    content: Content,
    /// Of the bytes in `content`, so that Content-Length matches what is sent.
    length: u64,
    html_charset: Option<String>,
}

/// The served variant's bytes, as far as the response needs them.
enum Content {
    /// HEAD: the lookup's metadata gives the length, the file is never opened.
    HeadersOnly,
    /// A small file, read whole in the blocking hop that found it.
    Whole(Bytes),
    /// A large file, opened in that hop and streamed from the handle.
    Stream(std::fs::File),
}

fn open_choice(
    choice: &FileChoice,
    sniff_charset: bool,
    wants_body: bool,
) -> io::Result<OpenedFile> {
    let (content, length) = if wants_body {
        open_served(choice.served_path(), choice.length)?
    } else {
        (Content::HeadersOnly, choice.length)
    };
    let html_charset = match &content {
        _ if !sniff_charset => None,
        // The identity file's head is in memory already: no second open.
        Content::Whole(bytes) if !choice.gzip() => {
            let head_length = bytes.len().min(CHARSET_SNIFF_BYTES as usize);
            sniff_html_charset(&bytes[..head_length])
        }
        _ => sniff_html_charset(&read_head(&choice.identity_path)?),
    };
    Ok(OpenedFile {
        content,
        length,
        html_charset,
    })
}

/// Opens the served variant, reading it whole when it is small. `expected_length` is the size
/// the lookup saw; a release never changes, but the length sent is always that of the bytes read
/// or of the open handle, never a stale one.
fn open_served(path: &Path, expected_length: u64) -> io::Result<(Content, u64)> {
    let file = std::fs::File::open(path)?;
    if expected_length > WHOLE_READ_BYTES {
        let length = file.metadata()?.len();
        return Ok((Content::Stream(file), length));
    }
    // Reading through `take` stops at the expected size without the extra read() that would
    // confirm the end of file, and without the fstat that `File::read_to_end` makes.
    let mut bytes = Vec::with_capacity(expected_length as usize);
    file.take(expected_length).read_to_end(&mut bytes)?;
    let length = bytes.len() as u64;
    Ok((Content::Whole(Bytes::from(bytes)), length))
}

fn read_head(path: &Path) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    std::fs::File::open(path)?
        .take(CHARSET_SNIFF_BYTES)
        .read_to_end(&mut head)?;
    Ok(head)
}

impl Content {
    /// The body for bytes `start..start + length`, which the caller has checked against the length.
    fn into_body(self, start: u64, length: u64) -> io::Result<Body> {
        match self {
            Content::HeadersOnly => Ok(body::empty()),
            Content::Whole(bytes) => {
                let (start, end) = (start as usize, (start + length) as usize);
                Ok(body::full(bytes.slice(start..end)))
            }
            Content::Stream(mut file) => {
                if start > 0 {
                    // Still on the blocking pool: seeking here saves a hop.
                    file.seek(io::SeekFrom::Start(start))?;
                }
                let file = tokio::fs::File::from_std(file).take(length);
                let stream = ReaderStream::with_capacity(file, CHUNK_BYTES)
                    .map_ok(Frame::data)
                    .map_err(BoxError::from);
                Ok(StreamBody::new(stream).boxed_unsync())
            }
        }
    }
}

/// Values here are built from hex digests, dates, numbers, MIME names, validated charset labels and
/// percent-encoded paths, so they are always valid; skipping a header beats a panic if not.
fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(value) => {
            headers.insert(name, value);
        }
        Err(_) => tracing::warn!(header = %name, "invalid header value skipped"),
    }
}

fn plain_text(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    insert(headers, header::CONTENT_TYPE, "text/plain; charset=utf-8");
    insert(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    response
}

fn not_found() -> Response<Body> {
    plain_text(StatusCode::NOT_FOUND, "not found")
}

fn method_not_allowed() -> Response<Body> {
    let mut response = plain_text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    insert(response.headers_mut(), header::ALLOW, "GET, HEAD");
    response
}

fn redirect(location: &str) -> Response<Body> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    let headers = response.headers_mut();
    insert(headers, header::LOCATION, location);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    response
}

#[cfg(test)]
#[path = "static_files_tests.rs"]
mod tests;
