use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use tempfile::TempDir;

use super::*;

const RELEASE: &str = "rel-1";
const APP_JS: &str = "console.log('hello');\n";
const SECRET: &str = "top secret outside the root";

/// A release directory inside a temporary directory that also holds a file outside the root.
struct Fixture {
    _dir: TempDir,
    root: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("release");
        std::fs::write(dir.path().join("secret.txt"), SECRET).unwrap();
        let fixture = Self { _dir: dir, root };
        fixture.write("index.html", "<!doctype html><title>home</title>");
        fixture.write("docs/index.htm", "docs index");
        fixture.write("docs/sub/page.txt", "sub page");
        fixture.write("empty/.keep", "");
        fixture.write("app.js", APP_JS);
        fixture.write("app.js.gz", "pretend gzip bytes");
        fixture.write("style.css", "body { color: red }");
        fixture.write("data.json", "{}");
        fixture.write("logo.svg", "<svg/>");
        fixture.write("logo.png", "png bytes");
        fixture.write("blob.unknownext", "blob");
        fixture.write("digits.txt", "0123456789");
        fixture.write("shoal.toml", "name = \"app\"");
        fixture.write("sub/shoal.toml", "not the config");
        fixture.write(".well-known/thing", "dotfile");
        fixture
    }

    fn write(&self, relative: &str, content: &str) {
        let path = self.root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    fn outside(&self) -> PathBuf {
        self.root.parent().unwrap().join("secret.txt")
    }

    async fn get(&self, path: &str, headers: &[(HeaderName, &str)]) -> Response<Body> {
        self.request(Method::GET, path, headers, &StaticOptions::default())
            .await
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, &str)],
        options: &StaticOptions,
    ) -> Response<Body> {
        let mut builder = http::Request::builder().method(method).uri("/");
        for (name, value) in headers {
            builder = builder.header(name, *value);
        }
        let (parts, ()) = builder.body(()).unwrap().into_parts();
        serve(&self.root, RELEASE, path, &parts, options).await
    }
}

async fn body_of(response: Response<Body>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

fn header_of(response: &Response<Body>, name: HeaderName) -> &str {
    response
        .headers()
        .get(&name)
        .unwrap_or_else(|| panic!("missing {name}"))
        .to_str()
        .unwrap()
}

fn spa() -> StaticOptions {
    StaticOptions {
        spa_fallback: Some("index.html".to_owned()),
        asset_max_age: None,
    }
}

#[tokio::test]
async fn root_and_directories_serve_their_index() {
    let fixture = Fixture::new();
    let response = fixture.get("/", &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        body_of(response).await,
        "<!doctype html><title>home</title>"
    );

    let response = fixture.get("/docs/", &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header_of(&response, header::CONTENT_TYPE),
        "text/html; charset=utf-8"
    );
    assert_eq!(body_of(response).await, "docs index");

    let response = fixture.get("/empty/", &[]).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(body_of(response).await, "not found");
}

#[tokio::test]
async fn directory_without_slash_redirects() {
    let fixture = Fixture::new();
    let response = fixture.get("/docs", &[]).await;
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(header_of(&response, header::LOCATION), "/docs/");

    let response = fixture.get("/docs/sub", &[]).await;
    assert_eq!(header_of(&response, header::LOCATION), "/docs/sub/");

    // Built from the decoded segments, so a doubled slash cannot become `//host/`.
    let response = fixture.get("//docs", &[]).await;
    assert_eq!(header_of(&response, header::LOCATION), "/docs/");
}

#[tokio::test]
async fn a_file_with_a_trailing_slash_is_not_found() {
    let fixture = Fixture::new();
    let response = fixture.get("/style.css/", &[]).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = fixture.get("/style.css/more", &[]).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn content_types_follow_the_extension() {
    let fixture = Fixture::new();
    let cases = [
        ("/style.css", "text/css; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/data.json", "application/json; charset=utf-8"),
        ("/logo.svg", "image/svg+xml; charset=utf-8"),
        ("/logo.png", "image/png"),
        ("/blob.unknownext", "application/octet-stream"),
        ("/digits.txt", "text/plain; charset=utf-8"),
    ];
    for (path, expected) in cases {
        let response = fixture.get(path, &[]).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(
            header_of(&response, header::CONTENT_TYPE),
            expected,
            "{path}"
        );
        assert_eq!(
            header_of(&response, header::X_CONTENT_TYPE_OPTIONS),
            "nosniff"
        );
    }
}

#[tokio::test]
async fn html_charset_is_sniffed_from_meta() {
    let fixture = Fixture::new();
    fixture.write(
        "latin.html",
        "<html><head><META CharSet='ISO-8859-1'></head>",
    );
    fixture.write(
        "equiv.htm",
        "<meta http-equiv=\"Content-Type\" content=\"text/html; charset=Shift_JIS\">",
    );
    fixture.write("wide.html", "<meta charset=\"utf-16le\">");
    fixture.write("bogus.html", "<meta charset=\"not-a-charset\">");
    let late = format!("{}<meta charset=\"iso-8859-2\">", " ".repeat(1100));
    fixture.write("late.html", &late);
    let cases = [
        ("/latin.html", "text/html; charset=iso-8859-1"),
        ("/equiv.htm", "text/html; charset=shift_jis"),
        ("/wide.html", "text/html; charset=utf-8"),
        ("/bogus.html", "text/html; charset=utf-8"),
        ("/late.html", "text/html; charset=utf-8"),
        ("/index.html", "text/html; charset=utf-8"),
    ];
    for (path, expected) in cases {
        let response = fixture.get(path, &[]).await;
        assert_eq!(
            header_of(&response, header::CONTENT_TYPE),
            expected,
            "{path}"
        );
    }
}

#[tokio::test]
async fn etag_revalidation_answers_304() {
    let fixture = Fixture::new();
    let response = fixture.get("/style.css", &[]).await;
    let etag = header_of(&response, header::ETAG).to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() == 22,
        "{etag}"
    );

    let list = format!("\"other\", {etag}");
    let weak = format!("W/{etag}");
    for condition in [etag.as_str(), list.as_str(), weak.as_str(), "*"] {
        let response = fixture
            .get("/style.css", &[(header::IF_NONE_MATCH, condition)])
            .await;
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{condition}");
        assert_eq!(header_of(&response, header::ETAG), etag);
        assert_eq!(header_of(&response, header::CACHE_CONTROL), "no-cache");
        assert!(body_of(response).await.is_empty());
    }

    let response = fixture
        .get("/style.css", &[(header::IF_NONE_MATCH, "\"other\"")])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[test]
fn etags_differ_by_release_path_and_variant() {
    assert_ne!(etag("a", "x.js", false), etag("b", "x.js", false));
    assert_ne!(etag("a", "x.js", false), etag("a", "y.js", false));
    assert_ne!(etag("a", "x.js", false), etag("a", "x.js", true));
    assert_eq!(etag("a", "x.js", false), etag("a", "x.js", false));
}

#[tokio::test]
async fn if_modified_since_answers_304() {
    let fixture = Fixture::new();
    let response = fixture.get("/style.css", &[]).await;
    let last_modified = header_of(&response, header::LAST_MODIFIED).to_owned();

    let response = fixture
        .get("/style.css", &[(header::IF_MODIFIED_SINCE, &last_modified)])
        .await;
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);

    let long_ago = "Sun, 06 Nov 1994 08:49:37 GMT";
    let response = fixture
        .get("/style.css", &[(header::IF_MODIFIED_SINCE, long_ago)])
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    // If-None-Match, when present, decides alone.
    let headers = [
        (header::IF_NONE_MATCH, "\"other\""),
        (header::IF_MODIFIED_SINCE, last_modified.as_str()),
    ];
    let response = fixture.get("/style.css", &headers).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn single_ranges_answer_206_with_the_slice() {
    let fixture = Fixture::new();
    let cases = [
        ("bytes=2-5", "bytes 2-5/10", "2345"),
        ("bytes=7-", "bytes 7-9/10", "789"),
        ("bytes=-3", "bytes 7-9/10", "789"),
        ("bytes=-30", "bytes 0-9/10", "0123456789"),
        ("bytes=8-100", "bytes 8-9/10", "89"),
    ];
    for (range, content_range, expected) in cases {
        let response = fixture.get("/digits.txt", &[(header::RANGE, range)]).await;
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(header_of(&response, header::CONTENT_RANGE), content_range);
        let length = expected.len().to_string();
        assert_eq!(header_of(&response, header::CONTENT_LENGTH), length);
        assert_eq!(body_of(response).await, expected, "{range}");
    }
}

#[tokio::test]
async fn unsatisfiable_ranges_answer_416() {
    let fixture = Fixture::new();
    for range in ["bytes=10-", "bytes=50-60", "bytes=-0"] {
        let response = fixture.get("/digits.txt", &[(header::RANGE, range)]).await;
        assert_eq!(
            response.status(),
            StatusCode::RANGE_NOT_SATISFIABLE,
            "{range}"
        );
        assert_eq!(header_of(&response, header::CONTENT_RANGE), "bytes */10");
    }
}

#[tokio::test]
async fn multiple_or_malformed_ranges_serve_everything() {
    let fixture = Fixture::new();
    for range in [
        "bytes=0-1,4-5",
        "bytes=5-2",
        "bytes=x-y",
        "items=0-1",
        "bytes=+1-2",
        "0-1",
    ] {
        let response = fixture.get("/digits.txt", &[(header::RANGE, range)]).await;
        assert_eq!(response.status(), StatusCode::OK, "{range}");
        assert_eq!(header_of(&response, header::ACCEPT_RANGES), "bytes");
        assert_eq!(body_of(response).await, "0123456789", "{range}");
    }
}

#[tokio::test]
async fn if_range_must_match_for_a_partial_response() {
    let fixture = Fixture::new();
    let response = fixture.get("/digits.txt", &[]).await;
    let etag = header_of(&response, header::ETAG).to_owned();
    let last_modified = header_of(&response, header::LAST_MODIFIED).to_owned();
    let weak = format!("W/{etag}");
    let cases = [
        (etag.as_str(), StatusCode::PARTIAL_CONTENT),
        (last_modified.as_str(), StatusCode::PARTIAL_CONTENT),
        ("\"other\"", StatusCode::OK),
        (weak.as_str(), StatusCode::OK),
        ("Sun, 06 Nov 1994 08:49:37 GMT", StatusCode::OK),
    ];
    for (if_range, status) in cases {
        let headers = [(header::RANGE, "bytes=0-1"), (header::IF_RANGE, if_range)];
        let response = fixture.get("/digits.txt", &headers).await;
        assert_eq!(response.status(), status, "{if_range}");
    }
}

#[tokio::test]
async fn head_has_the_headers_but_no_body() {
    let fixture = Fixture::new();
    let options = StaticOptions::default();
    let get = fixture.get("/digits.txt", &[]).await;
    let head = fixture
        .request(Method::HEAD, "/digits.txt", &[], &options)
        .await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header_of(&head, header::CONTENT_LENGTH), "10");
    assert_eq!(
        header_of(&head, header::CONTENT_LENGTH),
        header_of(&get, header::CONTENT_LENGTH)
    );
    assert_eq!(
        header_of(&head, header::ETAG),
        header_of(&get, header::ETAG)
    );
    assert!(body_of(head).await.is_empty());
}

#[tokio::test]
async fn other_methods_answer_405() {
    let fixture = Fixture::new();
    let options = StaticOptions::default();
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
        let response = fixture.request(method, "/index.html", &[], &options).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(header_of(&response, header::ALLOW), "GET, HEAD");
    }
}

#[tokio::test]
async fn traversal_attempts_are_not_found_even_with_a_fallback() {
    let fixture = Fixture::new();
    fixture.write("a/b", "inside");
    let attempts = [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/a/%2F..%2Fb",
        "/a/..%2f..%2fsecret.txt",
        "/index.html%00",
        "/a%5Cb",
        "/a\\b",
        "/%ff",
    ];
    for options in [StaticOptions::default(), spa()] {
        for attempt in attempts {
            let response = fixture.request(Method::GET, attempt, &[], &options).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{attempt}");
            assert_eq!(body_of(response).await, "not found", "{attempt}");
        }
    }
}

#[tokio::test]
async fn symlinks_are_followed_only_inside_the_root() {
    let fixture = Fixture::new();
    std::os::unix::fs::symlink(fixture.outside(), fixture.root.join("escape.txt")).unwrap();
    std::os::unix::fs::symlink(fixture.root.parent().unwrap(), fixture.root.join("up")).unwrap();
    std::os::unix::fs::symlink("digits.txt", fixture.root.join("alias.txt")).unwrap();
    for path in ["/escape.txt", "/up/secret.txt", "/up/"] {
        let response = fixture.get(path, &[]).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body_of(response).await, "not found");
    }
    let response = fixture.get("/alias.txt", &[]).await;
    assert_eq!(body_of(response).await, "0123456789");
}

#[tokio::test]
async fn the_root_config_is_never_served() {
    let fixture = Fixture::new();
    std::os::unix::fs::symlink("shoal.toml", fixture.root.join("config-alias")).unwrap();
    for path in [
        "/shoal.toml",
        "/%73hoal.toml",
        "/./shoal.toml",
        "//shoal.toml",
        "/config-alias",
    ] {
        let response = fixture.request(Method::GET, path, &[], &spa()).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let response = fixture.get("/sub/shoal.toml", &[]).await;
    assert_eq!(body_of(response).await, "not the config");
    let response = fixture.get("/.well-known/thing", &[]).await;
    assert_eq!(body_of(response).await, "dotfile");
}

#[tokio::test]
async fn gzip_sibling_is_served_only_when_accepted() {
    let fixture = Fixture::new();
    let identity = fixture.get("/app.js", &[]).await;
    let identity_etag = header_of(&identity, header::ETAG).to_owned();
    assert_eq!(header_of(&identity, header::VARY), "Accept-Encoding");
    assert!(identity.headers().get(header::CONTENT_ENCODING).is_none());
    assert_eq!(body_of(identity).await, APP_JS);

    for accept in ["gzip", "br, gzip;q=0.8", "*;q=0.5", "deflate, GZIP"] {
        let response = fixture
            .get("/app.js", &[(header::ACCEPT_ENCODING, accept)])
            .await;
        assert_eq!(
            header_of(&response, header::CONTENT_ENCODING),
            "gzip",
            "{accept}"
        );
        assert_eq!(
            header_of(&response, header::CONTENT_TYPE),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(header_of(&response, header::VARY), "Accept-Encoding");
        assert_eq!(header_of(&response, header::CONTENT_LENGTH), "18");
        assert_ne!(header_of(&response, header::ETAG), identity_etag);
        assert!(response.headers().get(header::ACCEPT_RANGES).is_none());
        assert_eq!(body_of(response).await, "pretend gzip bytes", "{accept}");
    }

    for accept in ["gzip;q=0", "br", "gzip;q=0, *", "identity"] {
        let response = fixture
            .get("/app.js", &[(header::ACCEPT_ENCODING, accept)])
            .await;
        assert!(
            response.headers().get(header::CONTENT_ENCODING).is_none(),
            "{accept}"
        );
        assert_eq!(body_of(response).await, APP_JS, "{accept}");
    }

    let response = fixture
        .get("/style.css", &[(header::ACCEPT_ENCODING, "gzip")])
        .await;
    assert!(response.headers().get(header::VARY).is_none());
    assert!(response.headers().get(header::CONTENT_ENCODING).is_none());
}

#[tokio::test]
async fn gzip_variant_ignores_range() {
    let fixture = Fixture::new();
    let headers = [
        (header::ACCEPT_ENCODING, "gzip"),
        (header::RANGE, "bytes=0-3"),
    ];
    let response = fixture.get("/app.js", &headers).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_of(response).await, "pretend gzip bytes");
}

#[tokio::test]
async fn spa_fallback_serves_the_fallback_file() {
    let fixture = Fixture::new();
    let response = fixture
        .request(Method::GET, "/some/route", &[], &spa())
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header_of(&response, header::CACHE_CONTROL), "no-cache");
    assert_eq!(
        header_of(&response, header::CONTENT_TYPE),
        "text/html; charset=utf-8"
    );
    assert_eq!(
        body_of(response).await,
        "<!doctype html><title>home</title>"
    );

    let response = fixture.get("/some/route", &[]).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let missing = StaticOptions {
        spa_fallback: Some("missing.html".to_owned()),
        asset_max_age: None,
    };
    let response = fixture
        .request(Method::GET, "/some/route", &[], &missing)
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let escaping = StaticOptions {
        spa_fallback: Some("../secret.txt".to_owned()),
        asset_max_age: None,
    };
    let response = fixture
        .request(Method::GET, "/some/route", &[], &escaping)
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn asset_max_age_applies_to_non_html_only() {
    let fixture = Fixture::new();
    let cached = StaticOptions {
        spa_fallback: None,
        asset_max_age: Some(3600),
    };
    let response = fixture
        .request(Method::GET, "/style.css", &[], &cached)
        .await;
    assert_eq!(
        header_of(&response, header::CACHE_CONTROL),
        "public, max-age=3600"
    );
    let response = fixture
        .request(Method::GET, "/index.html", &[], &cached)
        .await;
    assert_eq!(header_of(&response, header::CACHE_CONTROL), "no-cache");
    let response = fixture.get("/style.css", &[]).await;
    assert_eq!(header_of(&response, header::CACHE_CONTROL), "no-cache");
}

#[tokio::test]
async fn io_failures_answer_500_without_paths() {
    let missing_root = Path::new("/definitely/not/a/release/root");
    let (parts, ()) = http::Request::get("/").body(()).unwrap().into_parts();
    let response = serve(
        missing_root,
        RELEASE,
        "/",
        &parts,
        &StaticOptions::default(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body_of(response).await, "internal error");
}

/// Bytes that differ at every offset a test might slice at, so a wrong seek shows.
fn patterned(length: usize) -> String {
    (0..length)
        .map(|index| char::from(b'a' + (index % 26) as u8))
        .collect()
}

#[tokio::test]
async fn files_around_the_whole_read_limit_are_served_in_full() {
    let fixture = Fixture::new();
    let limit = WHOLE_READ_BYTES as usize;
    for length in [limit - 1, limit, limit + 1, 3 * limit + 17] {
        let content = patterned(length);
        fixture.write("big.bin", &content);
        let response = fixture.get("/big.bin", &[]).await;
        assert_eq!(response.status(), StatusCode::OK, "{length}");
        let expected_length = length.to_string();
        assert_eq!(
            header_of(&response, header::CONTENT_LENGTH),
            expected_length
        );
        assert_eq!(body_of(response).await, content.as_bytes(), "{length}");
    }
}

#[tokio::test]
async fn ranges_of_a_streamed_file_start_at_the_right_byte() {
    let fixture = Fixture::new();
    let length = 2 * WHOLE_READ_BYTES as usize + 5;
    let content = patterned(length);
    fixture.write("big.bin", &content);
    let cases = [
        ("bytes=70000-70009".to_owned(), 70_000, 70_009),
        (format!("bytes={}-", length - 3), length - 3, length - 1),
        ("bytes=-100000".to_owned(), length - 100_000, length - 1),
    ];
    for (range, start, end) in cases {
        let response = fixture.get("/big.bin", &[(header::RANGE, &range)]).await;
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        let content_range = format!("bytes {start}-{end}/{length}");
        assert_eq!(header_of(&response, header::CONTENT_RANGE), content_range);
        assert_eq!(
            body_of(response).await,
            content.as_bytes()[start..=end],
            "{range}"
        );
    }
}

#[tokio::test]
async fn head_of_a_large_file_has_its_length() {
    let fixture = Fixture::new();
    let length = WHOLE_READ_BYTES as usize + 1;
    fixture.write("big.bin", &patterned(length));
    let options = StaticOptions::default();
    let head = fixture
        .request(Method::HEAD, "/big.bin", &[], &options)
        .await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header_of(&head, header::CONTENT_LENGTH), length.to_string());
    assert!(body_of(head).await.is_empty());
}

#[tokio::test]
async fn symlinked_directories_inside_the_root_are_served() {
    let fixture = Fixture::new();
    fixture.write("docs/sub/page.txt.gz", "gz page");
    std::os::unix::fs::symlink("docs", fixture.root.join("manual")).unwrap();
    std::os::unix::fs::symlink("docs/sub", fixture.root.join("sub-alias")).unwrap();
    let response = fixture.get("/manual/sub/page.txt", &[]).await;
    assert_eq!(body_of(response).await, "sub page");
    let response = fixture.get("/manual/", &[]).await;
    assert_eq!(body_of(response).await, "docs index");
    let response = fixture.get("/manual", &[]).await;
    assert_eq!(header_of(&response, header::LOCATION), "/manual/");

    let gzip = [(header::ACCEPT_ENCODING, "gzip")];
    let response = fixture.get("/sub-alias/page.txt", &gzip).await;
    assert_eq!(header_of(&response, header::CONTENT_ENCODING), "gzip");
    assert_eq!(body_of(response).await, "gz page");
}

#[tokio::test]
async fn the_config_is_refused_through_a_symlinked_directory() {
    let fixture = Fixture::new();
    std::os::unix::fs::symlink(".", fixture.root.join("self")).unwrap();
    std::os::unix::fs::symlink("..", fixture.root.join("docs/parent")).unwrap();
    for path in ["/self/shoal.toml", "/docs/parent/shoal.toml"] {
        let response = fixture.request(Method::GET, path, &[], &spa()).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let response = fixture.get("/docs/parent/style.css", &[]).await;
    assert_eq!(body_of(response).await, "body { color: red }");
}

#[tokio::test]
async fn a_symlinked_gzip_sibling_outside_the_root_is_ignored() {
    let fixture = Fixture::new();
    std::os::unix::fs::symlink(fixture.outside(), fixture.root.join("style.css.gz")).unwrap();
    let response = fixture
        .get("/style.css", &[(header::ACCEPT_ENCODING, "gzip")])
        .await;
    assert!(response.headers().get(header::CONTENT_ENCODING).is_none());
    assert!(response.headers().get(header::VARY).is_none());
    assert_eq!(body_of(response).await, "body { color: red }");
}

#[tokio::test]
async fn charset_is_sniffed_for_head_and_for_the_gzip_variant() {
    let fixture = Fixture::new();
    fixture.write("latin.html", "<meta charset=\"iso-8859-1\">");
    fixture.write("latin.html.gz", "pretend gzip bytes");
    let options = StaticOptions::default();
    let head = fixture
        .request(Method::HEAD, "/latin.html", &[], &options)
        .await;
    assert_eq!(
        header_of(&head, header::CONTENT_TYPE),
        "text/html; charset=iso-8859-1"
    );
    let response = fixture
        .get("/latin.html", &[(header::ACCEPT_ENCODING, "gzip")])
        .await;
    assert_eq!(header_of(&response, header::CONTENT_ENCODING), "gzip");
    assert_eq!(
        header_of(&response, header::CONTENT_TYPE),
        "text/html; charset=iso-8859-1"
    );
}

#[tokio::test]
async fn a_missing_root_is_an_error_for_redirects_and_misses_too() {
    let missing_root = Path::new("/definitely/not/a/release/root");
    let (parts, ()) = http::Request::get("/").body(()).unwrap().into_parts();
    for path in ["", "/nothing.txt", "/deep/nothing/"] {
        let response = serve(missing_root, RELEASE, path, &parts, &spa()).await;
        assert_eq!(
            response.status(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "{path}"
        );
    }
}
