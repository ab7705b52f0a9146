use std::io::Write;

use bytes::Bytes;
use flate2::write::{GzEncoder, ZlibEncoder};
use flate2::Compression;
use futures_util::stream;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

use super::*;

fn dash() -> PrefixRewriter {
    PrefixRewriter::new("/apps/dash")
}

fn body_of_chunks(chunks: Vec<Vec<u8>>) -> Body {
    let frames = chunks
        .into_iter()
        .map(|chunk| Ok::<_, BoxError>(Frame::data(Bytes::from(chunk))));
    StreamBody::new(stream::iter(frames)).boxed_unsync()
}

fn response(content_type: &str, chunks: Vec<Vec<u8>>) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(body_of_chunks(chunks))
        .unwrap()
}

async fn collect(response: Response<Body>) -> Vec<u8> {
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}

/// Rewrites `html` delivered as one frame.
async fn rewrite_html(html: &str) -> String {
    let rewritten = dash().rewrite_response(response("text/html", vec![html.into()]));
    String::from_utf8(collect(rewritten).await).unwrap()
}

#[test]
fn rewrite_url_scopes_absolute_paths_only() {
    let rewriter = dash();
    assert_eq!(rewriter.rewrite_url("/x"), Some("/apps/dash/x".into()));
    assert_eq!(rewriter.rewrite_url("/"), Some("/apps/dash/".into()));
    assert_eq!(
        rewriter.rewrite_url("  /x?q=1#f \n"),
        Some("/apps/dash/x?q=1#f".into())
    );
    assert_eq!(
        rewriter.rewrite_url("/apps/dashboard"),
        Some("/apps/dash/apps/dashboard".into())
    );
    for untouched in [
        "x.js",
        "./x.js",
        "../x.js",
        "//cdn.example/x.js",
        "/\\evil.example/x",
        "https://example.com/x",
        "#frag",
        "?q=1",
        "data:image/png;base64,AAAA",
        "mailto:a@b.c",
        "javascript:void(0)",
        "/apps/dash",
        "/apps/dash/",
        "/apps/dash/x.js",
        "/apps/dash?x=1",
        "",
        "   ",
    ] {
        assert_eq!(rewriter.rewrite_url(untouched), None, "{untouched:?}");
    }
}

#[test]
fn new_normalises_the_prefix() {
    assert_eq!(PrefixRewriter::new("/apps/dash/").prefix(), "/apps/dash");
    assert_eq!(PrefixRewriter::new("apps/dash").prefix(), "/apps/dash");
    assert_eq!(PrefixRewriter::new("/").rewrite_url("/x"), None);
}

#[test]
fn srcset_rewrites_every_candidate() {
    let rewriter = dash();
    assert_eq!(
        rewriter.rewrite_srcset("/a.png 1x, /b.png 2x").as_deref(),
        Some("/apps/dash/a.png 1x, /apps/dash/b.png 2x")
    );
    assert_eq!(
        rewriter
            .rewrite_srcset(" /a.png, /b.png 480w ,c.png 2x,/d.png")
            .as_deref(),
        Some(" /apps/dash/a.png, /apps/dash/b.png 480w ,c.png 2x,/apps/dash/d.png")
    );
    assert_eq!(
        rewriter
            .rewrite_srcset("data:image/png;base64,AA,BB 1x, /b.png 2x")
            .as_deref(),
        Some("data:image/png;base64,AA,BB 1x, /apps/dash/b.png 2x")
    );
    // A URL runs to whitespace, so this is one candidate whose URL holds a comma.
    assert_eq!(
        rewriter.rewrite_srcset("/a.png,/b.png 2x").as_deref(),
        Some("/apps/dash/a.png,/b.png 2x")
    );
    assert_eq!(
        rewriter.rewrite_srcset("a.png 1x, https://x/b.png 2x"),
        None
    );
}

#[test]
fn refresh_values() {
    let rewriter = dash();
    for (value, expected) in [
        ("5; url=/next", "5; url=/apps/dash/next"),
        ("0;URL='/next?a=1'", "0;URL='/apps/dash/next?a=1'"),
        ("0; Url = \"/next\"", "0; Url = \"/apps/dash/next\""),
        ("3, /next", "3, /apps/dash/next"),
        (
            "1; url=&quot;/next&quot;",
            "1; url=&quot;/apps/dash/next&quot;",
        ),
    ] {
        assert_eq!(
            rewriter.rewrite_refresh(value).as_deref(),
            Some(expected),
            "{value:?}"
        );
    }
    assert_eq!(rewriter.rewrite_refresh("5"), None);
    assert_eq!(rewriter.rewrite_refresh("5; url=next"), None);
    assert_eq!(
        rewriter.rewrite_refresh("5; url=https://example.com/"),
        None
    );
}

#[test]
fn set_cookie_paths() {
    let rewriter = dash();
    assert_eq!(
        rewriter
            .rewrite_set_cookie("sid=1; Path=/; HttpOnly")
            .as_deref(),
        Some("sid=1; Path=/apps/dash; HttpOnly")
    );
    assert_eq!(
        rewriter
            .rewrite_set_cookie("sid=1; HttpOnly; Path=/x")
            .as_deref(),
        Some("sid=1; HttpOnly; Path=/apps/dash/x")
    );
    assert_eq!(
        rewriter
            .rewrite_set_cookie("sid=1;path=/x/y;Secure")
            .as_deref(),
        Some("sid=1;path=/apps/dash/x/y;Secure")
    );
    assert_eq!(
        rewriter.rewrite_set_cookie("sid=1; HttpOnly; Max-Age=60"),
        None
    );
    assert_eq!(
        rewriter.rewrite_set_cookie("path=/x; Secure"),
        None,
        "name=value is no attribute"
    );
    assert_eq!(
        rewriter.rewrite_set_cookie("sid=1; Path=/apps/dash/x"),
        None
    );
}

#[test]
fn css_urls_quoted_unquoted_and_imports() {
    let rewriter = dash();
    let css = "a{background:url(/a.png)} b{background:URL( '/b.png' )} \
               c{background:url(\"/c.png\")} d{background:url(d.png)} @import \"/e.css\"; \
               @import url(/f.css); g{background:url(//cdn/x.png)}";
    let expected = "a{background:url(/apps/dash/a.png)} b{background:URL( '/apps/dash/b.png' )} \
                    c{background:url(\"/apps/dash/c.png\")} d{background:url(d.png)} \
                    @import \"/apps/dash/e.css\"; @import url(/apps/dash/f.css); \
                    g{background:url(//cdn/x.png)}";
    assert_eq!(rewriter.rewrite_css(css).as_deref(), Some(expected));
    assert_eq!(
        rewriter
            .rewrite_css("background:url(&quot;/a.png&quot;)")
            .as_deref(),
        Some("background:url(&quot;/apps/dash/a.png&quot;)")
    );
    assert_eq!(rewriter.rewrite_css("color: red"), None);
}

#[tokio::test]
async fn every_url_attribute_kind_is_rewritten() {
    let cases = [
        (r#"<a href="/x">"#, r#"<a href="/apps/dash/x">"#),
        (
            r#"<link rel="stylesheet" href="/s.css">"#,
            r#"<link rel="stylesheet" href="/apps/dash/s.css">"#,
        ),
        (r#"<area href="/x">"#, r#"<area href="/apps/dash/x">"#),
        (
            r#"<svg><use href="/i.svg#a"></use></svg>"#,
            r#"<svg><use href="/apps/dash/i.svg#a"></use></svg>"#,
        ),
        (
            r#"<svg><image xlink:href="/i.png"></image></svg>"#,
            r#"<svg><image xlink:href="/apps/dash/i.png"></image></svg>"#,
        ),
        (
            r#"<script src="/app.js"></script>"#,
            r#"<script src="/apps/dash/app.js"></script>"#,
        ),
        (r#"<img src="/i.png">"#, r#"<img src="/apps/dash/i.png">"#),
        (
            r#"<iframe src="/f"></iframe>"#,
            r#"<iframe src="/apps/dash/f"></iframe>"#,
        ),
        (
            r#"<audio src="/a.mp3"></audio>"#,
            r#"<audio src="/apps/dash/a.mp3"></audio>"#,
        ),
        (
            r#"<embed src="/e.swf">"#,
            r#"<embed src="/apps/dash/e.swf">"#,
        ),
        (
            r#"<track src="/t.vtt">"#,
            r#"<track src="/apps/dash/t.vtt">"#,
        ),
        (
            r#"<input type="image" src="/b.png">"#,
            r#"<input type="image" src="/apps/dash/b.png">"#,
        ),
        (
            r#"<form action="/post"></form>"#,
            r#"<form action="/apps/dash/post"></form>"#,
        ),
        (
            r#"<button formaction="/go"></button>"#,
            r#"<button formaction="/apps/dash/go"></button>"#,
        ),
        (
            r#"<input type="submit" formaction="/go">"#,
            r#"<input type="submit" formaction="/apps/dash/go">"#,
        ),
        (
            r#"<video src="/v.mp4" poster="/p.jpg"></video>"#,
            r#"<video src="/apps/dash/v.mp4" poster="/apps/dash/p.jpg"></video>"#,
        ),
        (
            r#"<video><source src="/v.webm"></video>"#,
            r#"<video><source src="/apps/dash/v.webm"></video>"#,
        ),
        (
            r#"<object data="/o.svg"></object>"#,
            r#"<object data="/apps/dash/o.svg"></object>"#,
        ),
        (
            r#"<img srcset="/a.png 1x, /b.png 2x">"#,
            r#"<img srcset="/apps/dash/a.png 1x, /apps/dash/b.png 2x">"#,
        ),
        (
            r#"<picture><source srcset="/a.webp 480w, /b.webp 800w"></picture>"#,
            r#"<picture><source srcset="/apps/dash/a.webp 480w, /apps/dash/b.webp 800w"></picture>"#,
        ),
        (
            r#"<META HTTP-EQUIV="Refresh" CONTENT="5; url=/next">"#,
            r#"<META HTTP-EQUIV="Refresh" CONTENT="5; url=/apps/dash/next">"#,
        ),
        (r#"<base href="/">"#, r#"<base href="/apps/dash/">"#),
        (
            r#"<div style="background:url('/bg.png')"></div>"#,
            r#"<div style="background:url('/apps/dash/bg.png')"></div>"#,
        ),
        (
            "<style>body{background:url(/bg.png)}</style>",
            "<style>body{background:url(/apps/dash/bg.png)}</style>",
        ),
        (r#"<a href='/x'>"#, r#"<a href="/apps/dash/x">"#),
    ];
    for (input, expected) in cases {
        assert_eq!(rewrite_html(input).await, expected, "{input}");
    }
}

#[tokio::test]
async fn other_urls_and_markup_are_left_alone() {
    let html = concat!(
        r#"<!DOCTYPE html><html><head><meta charset="utf-8">"#,
        r#"<meta http-equiv="content-type" content="/not-a-url"></head><body>"#,
        r#"<a href="/apps/dash/x">a</a><a href="/apps/dash">b</a><a href="rel/x">c</a>"#,
        r#"<a href="//cdn.example/x">d</a><a href="https://example.com/x">e</a>"#,
        r##"<a href="#top">f</a><a href="?q=1">g</a><a href="mailto:a@b.c">h</a>"##,
        r#"<a href="javascript:go('/x')">i</a><img src="data:image/gif;base64,R0lG">"#,
        r#"<div data-href="/x" title="/x">/x &amp; text</div><!-- <a href="/x"> -->"#,
        r#"<script>fetch("/api")</script><a href="/x?a=1&amp;b=2">j</a></body></html>"#,
    );
    let expected = html.replace(
        r#"<a href="/x?a=1&amp;b=2">"#,
        r#"<a href="/apps/dash/x?a=1&amp;b=2">"#,
    );
    assert_eq!(rewrite_html(html).await, expected);
}

#[tokio::test]
async fn style_text_split_across_frames_is_rewritten() {
    let chunks = vec![
        b"<style>a{background:ur".to_vec(),
        b"l(/a.p".to_vec(),
        b"ng)} b{background:url(\"/b.png\")}</st".to_vec(),
        b"yle><style>c{x:url(/c.png)}</style>".to_vec(),
    ];
    let rewritten = dash().rewrite_response(response("text/html", chunks));
    assert_eq!(
        String::from_utf8(collect(rewritten).await).unwrap(),
        "<style>a{background:url(/apps/dash/a.png)} b{background:url(\"/apps/dash/b.png\")}</style>\
         <style>c{x:url(/apps/dash/c.png)}</style>"
    );
}

const PAGE: &str = concat!(
    "<!doctype html><html><head><base href=\"/\"><link rel=stylesheet href=\"/s.css\">",
    "<style>body{background:url('/bg.png')}</style>",
    "<meta http-equiv=refresh content=\"30; url=/\"></head><body>",
    "<img src=/a.png srcset=\"/a.png 1x, /b.png 2x\" alt=\"caf\u{e9}\">",
    "<a href=\"/x?y=1&amp;z=2\" style=\"background:url(/i.png)\">x</a>",
    "<form action=\"/post\"><button formaction=/go>go</button></form>",
    "<a href=\"/apps/dash/already\">ok</a><a href=\"relative\">ok</a></body></html>",
);

#[tokio::test]
async fn one_byte_frames_give_the_same_output_as_one_frame() {
    let whole = rewrite_html(PAGE).await;
    assert!(whole.contains(
        r#"<img src="/apps/dash/a.png" srcset="/apps/dash/a.png 1x, /apps/dash/b.png 2x""#
    ));
    assert!(whole.contains("url('/apps/dash/bg.png')"));
    let bytes = PAGE.as_bytes().iter().map(|byte| vec![*byte]).collect();
    let rewritten = dash().rewrite_response(response("text/html; charset=utf-8", bytes));
    assert_eq!(String::from_utf8(collect(rewritten).await).unwrap(), whole);
}

#[tokio::test]
async fn output_streams_before_the_body_ends() {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let frames = stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|frame| (frame, receiver))
    });
    let body = StreamBody::new(frames).boxed_unsync();
    let response = Response::builder()
        .header(header::CONTENT_TYPE, "text/html")
        .body(body)
        .unwrap();
    let mut body = dash().rewrite_response(response).into_body();
    sender
        .send(Ok(Frame::data(Bytes::from_static(
            b"<a href=\"/x\">x</a><p>",
        ))))
        .await
        .unwrap();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"<a href=\"/apps/dash/x\">"), "{first:?}");
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-done", HeaderValue::from_static("1"));
    sender
        .send(Ok(Frame::trailers(trailers.clone())))
        .await
        .unwrap();
    drop(sender);
    let mut rest = Vec::new();
    let mut seen_trailers = None;
    while let Some(frame) = body.frame().await {
        match frame.unwrap().into_data() {
            Ok(data) => rest.extend_from_slice(&data),
            Err(frame) => seen_trailers = frame.into_trailers().ok(),
        }
    }
    assert_eq!(seen_trailers, Some(trailers));
    assert_eq!(
        [&first[..], &rest[..]].concat(),
        b"<a href=\"/apps/dash/x\">x</a><p>"
    );
}

#[tokio::test]
async fn headers_are_rewritten_on_every_response() {
    let response = Response::builder()
        .status(StatusCode::FOUND)
        .header(header::LOCATION, "/login?next=/x")
        .header(header::CONTENT_LOCATION, "/doc")
        .header(header::REFRESH, "0; url=/later")
        .header(header::SET_COOKIE, "a=1; Path=/")
        .header(header::SET_COOKIE, "b=2; path=/x; HttpOnly")
        .header(header::SET_COOKIE, "c=3; HttpOnly")
        .header(
            header::LINK,
            "</s.css>; rel=preload; as=style, <https://cdn/x.js>; rel=preload",
        )
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, "13")
        .body(body_of_chunks(vec![br#"{"u":"/x"}"#.to_vec()]))
        .unwrap();
    let rewritten = dash().rewrite_response(response);
    let headers = rewritten.headers();
    assert_eq!(headers[header::LOCATION], "/apps/dash/login?next=/x");
    assert_eq!(headers[header::CONTENT_LOCATION], "/apps/dash/doc");
    assert_eq!(headers[header::REFRESH], "0; url=/apps/dash/later");
    let cookies: Vec<_> = headers.get_all(header::SET_COOKIE).iter().collect();
    assert_eq!(
        cookies,
        [
            "a=1; Path=/apps/dash",
            "b=2; path=/apps/dash/x; HttpOnly",
            "c=3; HttpOnly"
        ]
    );
    assert_eq!(
        headers[header::LINK],
        "</apps/dash/s.css>; rel=preload; as=style, <https://cdn/x.js>; rel=preload"
    );
    assert_eq!(
        headers[header::CONTENT_LENGTH],
        "13",
        "non-HTML body keeps its length"
    );
    assert_eq!(collect(rewritten).await, br#"{"u":"/x"}"#);
}

#[tokio::test]
async fn absolute_locations_are_left_alone() {
    let response = Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, "https://example.com/x")
        .body(crate::body::empty())
        .unwrap();
    let rewritten = dash().rewrite_response(response);
    assert_eq!(
        rewritten.headers()[header::LOCATION],
        "https://example.com/x"
    );
}

#[tokio::test]
async fn rewritten_html_drops_length_and_ranges_and_weakens_etag() {
    let html = br#"<a href="/x">x</a>"#.to_vec();
    let response = Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=UTF-8")
        .header(header::CONTENT_LENGTH, html.len())
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, "\"abc\"")
        .body(body_of_chunks(vec![html]))
        .unwrap();
    let rewritten = dash().rewrite_response(response);
    assert!(!rewritten.headers().contains_key(header::CONTENT_LENGTH));
    assert!(!rewritten.headers().contains_key(header::ACCEPT_RANGES));
    assert_eq!(rewritten.headers()[header::ETAG], "W/\"abc\"");
    assert_eq!(collect(rewritten).await, br#"<a href="/apps/dash/x">x</a>"#);
}

#[tokio::test]
async fn gzip_and_deflate_html_is_decompressed_and_rewritten() {
    let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
    gzip.write_all(PAGE.as_bytes()).unwrap();
    let mut deflate = ZlibEncoder::new(Vec::new(), Compression::default());
    deflate.write_all(PAGE.as_bytes()).unwrap();
    let expected = rewrite_html(PAGE).await;
    for (coding, compressed) in [
        ("gzip", gzip.finish().unwrap()),
        ("deflate", deflate.finish().unwrap()),
    ] {
        let chunks = compressed.chunks(7).map(<[u8]>::to_vec).collect();
        let mut response = response("text/html", chunks);
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        let rewritten = dash().rewrite_response(response);
        assert!(
            !rewritten.headers().contains_key(header::CONTENT_ENCODING),
            "{coding}"
        );
        assert!(
            !rewritten.headers().contains_key(header::CONTENT_LENGTH),
            "{coding}"
        );
        assert_eq!(
            String::from_utf8(collect(rewritten).await).unwrap(),
            expected,
            "{coding}"
        );
    }
}

#[tokio::test]
async fn truncated_gzip_ends_the_body_with_an_error() {
    let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
    gzip.write_all(PAGE.as_bytes()).unwrap();
    let mut compressed = gzip.finish().unwrap();
    compressed.truncate(compressed.len() - 4);
    let mut response = response("text/html", vec![compressed]);
    response
        .headers_mut()
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    let body = dash().rewrite_response(response).into_body();
    assert!(body.collect().await.is_err());
}

#[tokio::test]
async fn unsupported_encodings_pass_through_byte_identical() {
    let bytes = b"\x1b\x00\xf8<a href=\"/x\">not really brotli".to_vec();
    let mut response = response("text/html", vec![bytes.clone()]);
    response
        .headers_mut()
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    let rewritten = dash().rewrite_response(response);
    assert_eq!(rewritten.headers()[header::CONTENT_ENCODING], "br");
    assert!(rewritten.headers().contains_key(header::CONTENT_LENGTH));
    assert_eq!(collect(rewritten).await, bytes);
}

#[tokio::test]
async fn latin1_text_survives_byte_identical() {
    let mut html =
        b"<p>caf\xe9 cr\xe8me</p><a href=\"/caf\xe9\" title=\"\xe9t\xe9\">x</a>".to_vec();
    html.extend_from_slice(b"<style>p{background:url(/\xe9.png)}</style>");
    let response = response("text/html; charset=ISO-8859-1", vec![html.clone()]);
    let rewritten = collect(dash().rewrite_response(response)).await;
    let mut expected =
        b"<p>caf\xe9 cr\xe8me</p><a href=\"/apps/dash/caf\xe9\" title=\"\xe9t\xe9\">x</a>".to_vec();
    expected.extend_from_slice(b"<style>p{background:url(/apps/dash/\xe9.png)}</style>");
    assert_eq!(rewritten, expected);
}

#[tokio::test]
async fn unsupported_charsets_pass_through_untouched() {
    let utf16: Vec<u8> = "<a href=\"/x\">x</a>"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    for content_type in [
        "text/html; charset=utf-16le",
        "text/html; charset=iso-2022-jp",
        "text/html; charset=nonsense",
    ] {
        let rewritten = dash().rewrite_response(response(content_type, vec![utf16.clone()]));
        assert_eq!(collect(rewritten).await, utf16, "{content_type}");
    }
}

#[tokio::test]
async fn partial_content_passes_through_untouched() {
    let bytes = br#"<a href="/x">"#.to_vec();
    let response = Response::builder()
        .status(StatusCode::PARTIAL_CONTENT)
        .header(header::CONTENT_TYPE, "text/html")
        .header(header::CONTENT_RANGE, "bytes 0-12/100")
        .header(header::CONTENT_LENGTH, "13")
        .body(body_of_chunks(vec![bytes.clone()]))
        .unwrap();
    let rewritten = dash().rewrite_response(response);
    assert_eq!(rewritten.headers()[header::CONTENT_LENGTH], "13");
    assert_eq!(collect(rewritten).await, bytes);
}

#[tokio::test]
async fn non_html_bodies_pass_through_untouched() {
    for content_type in [
        "text/css",
        "application/javascript",
        "text/plain",
        "application/json",
    ] {
        let bytes = br#"<a href="/x"> url(/y)"#.to_vec();
        let rewritten = dash().rewrite_response(response(content_type, vec![bytes.clone()]));
        assert_eq!(collect(rewritten).await, bytes, "{content_type}");
    }
    let no_type = Response::new(body_of_chunks(vec![br#"<a href="/x">"#.to_vec()]));
    assert_eq!(
        collect(dash().rewrite_response(no_type)).await,
        br#"<a href="/x">"#
    );
}

#[tokio::test]
async fn xhtml_is_rewritten() {
    let rewritten = dash().rewrite_response(response(
        "application/xhtml+xml",
        vec![br#"<a href="/x">x</a>"#.to_vec()],
    ));
    assert_eq!(collect(rewritten).await, br#"<a href="/apps/dash/x">x</a>"#);
}

#[tokio::test]
async fn rewriter_memory_is_capped() {
    // One start tag spread over many frames must be buffered whole by lol_html.
    let mut chunks = vec![b"<a title=\"".to_vec()];
    chunks.extend(std::iter::repeat_n(vec![b'x'; 64 * 1024], 200));
    let body = dash()
        .rewrite_response(response("text/html", chunks))
        .into_body();
    assert!(body.collect().await.is_err());
}

#[tokio::test]
async fn empty_gzip_labelled_body_is_no_error() {
    // What a HEAD answer looks like: the head of the GET, no bytes.
    let mut response = response("text/html", Vec::new());
    response
        .headers_mut()
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    let rewritten = dash().rewrite_response(response);
    assert_eq!(collect(rewritten).await, b"");
}

#[tokio::test]
async fn style_attribute_with_entity_quotes() {
    assert_eq!(
        rewrite_html(r#"<p style="background:url(&quot;/a.png&quot;)">"#).await,
        r#"<p style="background:url(&quot;/apps/dash/a.png&quot;)">"#
    );
}
