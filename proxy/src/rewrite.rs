//! Rewriting the responses of an app served under a path prefix such as `/apps/dash`.
//!
//! An app written to live at `/` emits absolute paths (`<script src="/app.js">`,
//! `Location: /login`, `Set-Cookie: ...; Path=/`); under a prefix those would escape to the
//! ingress root. Headers are rewritten in place; HTML bodies are rewritten while they stream
//! through lol_html, frame by frame, so a body is never held whole.
//!
//! Not covered, by design: URLs that scripts build at run time, and URLs inside non-HTML bodies
//! (external CSS, JSON). Apps that need those must use relative URLs.

use std::borrow::Cow;
use std::io::{self, Write};
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use encoding_rs::Encoding;
use flate2::write::{MultiGzDecoder, ZlibDecoder};
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use lol_html::html_content::TextChunk;
use lol_html::{
    element, send, text, AsciiCompatibleEncoding, HandlerResult, MemorySettings, OutputSink,
    Settings,
};

use crate::body::{Body, BoxError};

/// Hard cap on what lol_html may buffer for one response (a tag split over many frames, say).
const MAX_REWRITER_MEMORY: usize = 8 * 1024 * 1024;

/// Compressed input is fed in slices this large, so that one frame of a highly compressible
/// body cannot inflate into one huge buffer before any of it is sent on.
const FEED_SLICE: usize = 4 * 1024;

/// A `<style>` element longer than this is passed through without rewriting, so that its text
/// cannot grow our buffer without bound (lol_html's memory cap does not see it).
const MAX_STYLE_TEXT: usize = 1024 * 1024;

/// What may open a quoted URL in CSS or a refresh value. Attribute values are raw, so a quote
/// may still be written as an entity there.
const QUOTES: [&str; 6] = ["\"", "'", "&quot;", "&#34;", "&#39;", "&apos;"];

/// Rewrites responses of one app served under a path prefix such as `/apps/dash`.
#[derive(Clone, Debug)]
pub struct PrefixRewriter {
    /// Starts with `/` and has no trailing slash; empty means "served at the root".
    prefix: Arc<str>,
}

impl PrefixRewriter {
    /// `prefix` like "/apps/dash" (no trailing slash).
    pub fn new(prefix: &str) -> Self {
        let trimmed = prefix.trim_end_matches('/');
        let prefix = if trimmed.is_empty() || trimmed.starts_with('/') {
            trimmed.to_owned()
        } else {
            format!("/{trimmed}")
        };
        PrefixRewriter {
            prefix: prefix.into(),
        }
    }

    /// The prefix, without trailing slash.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// "/x" -> Some("/apps/dash/x"); "/" -> Some("/apps/dash/"). None (leave unchanged) for relative URLs,
    /// protocol-relative "//host/x", absolute "https://..", "#frag", "?q", "data:", "mailto:", "javascript:",
    /// and values already under the prefix ("/apps/dash" exactly or starting with "/apps/dash/").
    /// Leading/trailing ASCII whitespace in an attribute value is tolerated.
    pub fn rewrite_url(&self, value: &str) -> Option<String> {
        let url = value.trim_matches(is_html_whitespace);
        if self.prefix.is_empty() || !is_absolute_path(url) || self.is_under_prefix(url) {
            return None;
        }
        Some(format!("{}{url}", self.prefix))
    }

    /// Every URL candidate in a srcset value ("/a.png 1x, /b.png 2x").
    pub fn rewrite_srcset(&self, value: &str) -> Option<String> {
        rewrite_spans(value, srcset_url_spans(value), |url| self.rewrite_url(url))
    }

    /// `<meta http-equiv="refresh" content="5; url=/next">` content value; also the Refresh header.
    pub fn rewrite_refresh(&self, value: &str) -> Option<String> {
        let span = refresh_url_span(value)?;
        rewrite_spans(value, [span], |url| self.rewrite_url(url))
    }

    /// `Path=/x` attribute of a Set-Cookie value -> `Path=/apps/dash/x` (case-insensitive attribute name);
    /// a cookie without Path is left alone.
    ///
    /// `Path=/` becomes `Path=/apps/dash` rather than `/apps/dash/`: cookie path matching then
    /// covers `/apps/dash` itself as well as everything below it, and still not `/apps/dashboard`.
    pub fn rewrite_set_cookie(&self, value: &str) -> Option<String> {
        let mut spans = Vec::new();
        let mut offset = 0;
        for (index, part) in value.split(';').enumerate() {
            let is_path = part
                .split_once('=')
                .is_some_and(|(name, _)| name.trim().eq_ignore_ascii_case("path"));
            if index > 0 && is_path {
                let value_start = offset + part.find('=').map_or(0, |eq| eq + 1);
                spans.push(value_start..offset + part.len());
            }
            offset += part.len() + 1;
        }
        rewrite_spans(value, spans, |path| {
            if path == "/" && !self.prefix.is_empty() {
                Some(self.prefix.to_string())
            } else {
                self.rewrite_url(path)
            }
        })
    }

    /// Applies all header rewrites (Location, Content-Location, Refresh, every Set-Cookie) and, when the
    /// response is HTML (Content-Type text/html or application/xhtml+xml), wraps the body in the
    /// streaming HTML rewriter. Must never buffer the whole body.
    pub fn rewrite_response(&self, response: Response<Body>) -> Response<Body> {
        let (mut parts, body) = response.into_parts();
        self.rewrite_headers(&mut parts.headers);
        let plan = HtmlPlan::for_response(parts.status, &parts.headers, &body);
        let Some(plan) = plan.filter(|_| !self.prefix.is_empty()) else {
            return Response::from_parts(parts, body);
        };
        mark_body_rewritten(&mut parts.headers, plan.decoding);
        let body = HtmlRewriteBody::new(body, self, &plan).boxed_unsync();
        Response::from_parts(parts, body)
    }

    fn is_under_prefix(&self, url: &str) -> bool {
        url.strip_prefix(&*self.prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?', '#']))
    }

    /// `url(...)` values and `@import "..."` strings in a style sheet or a `style` attribute.
    fn rewrite_css(&self, css: &str) -> Option<String> {
        rewrite_spans(css, css_url_spans(css), |url| self.rewrite_url(url))
    }

    /// The `<...>` targets of a Link header, so preload hints point under the prefix too.
    fn rewrite_link(&self, value: &str) -> Option<String> {
        let mut spans = Vec::new();
        let mut search = 0;
        while let Some(open) = value[search..].find('<') {
            let start = search + open + 1;
            let Some(close) = value[start..].find('>') else {
                break;
            };
            spans.push(start..start + close);
            search = start + close + 1;
        }
        rewrite_spans(value, spans, |url| self.rewrite_url(url))
    }

    fn rewrite_headers(&self, headers: &mut HeaderMap) {
        rewrite_header_values(headers, header::LOCATION, |v| self.rewrite_url(v));
        rewrite_header_values(headers, header::CONTENT_LOCATION, |v| self.rewrite_url(v));
        rewrite_header_values(headers, header::REFRESH, |v| self.rewrite_refresh(v));
        rewrite_header_values(headers, header::SET_COOKIE, |v| self.rewrite_set_cookie(v));
        rewrite_header_values(headers, header::LINK, |v| self.rewrite_link(v));
    }
}

fn is_html_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0C')
}

fn skip_whitespace(text: &str, mut pos: usize) -> usize {
    let bytes = text.as_bytes();
    while pos < bytes.len() && is_html_whitespace(bytes[pos] as char) {
        pos += 1;
    }
    pos
}

/// `/x` but not `//host/x`, nor `/\host/x`, which browsers also read as protocol-relative.
fn is_absolute_path(url: &str) -> bool {
    let mut bytes = url.bytes();
    bytes.next() == Some(b'/') && !matches!(bytes.next(), Some(b'/' | b'\\'))
}

fn quote_at(text: &str) -> Option<&'static str> {
    QUOTES.into_iter().find(|quote| text.starts_with(quote))
}

/// Replaces each span of `text` for which `rewrite` has an answer; `None` when nothing changed.
/// Spans must be sorted; whitespace at a span's edges is kept.
fn rewrite_spans(
    text: &str,
    spans: impl IntoIterator<Item = Range<usize>>,
    rewrite: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    let mut output = String::new();
    let mut copied_up_to = 0;
    for span in spans {
        let raw = &text[span.clone()];
        let start = span.start + (raw.len() - raw.trim_start_matches(is_html_whitespace).len());
        let end = span.start + raw.trim_end_matches(is_html_whitespace).len();
        if start < copied_up_to || start >= end {
            continue;
        }
        if let Some(replacement) = rewrite(&text[start..end]) {
            output.push_str(&text[copied_up_to..start]);
            output.push_str(&replacement);
            copied_up_to = end;
        }
    }
    if copied_up_to == 0 {
        return None;
    }
    output.push_str(&text[copied_up_to..]);
    Some(output)
}

/// The URL of each image candidate, following the HTML srcset parsing rules: a URL runs to the
/// next whitespace (so it may hold commas, as `data:` URLs do) and trailing commas end it.
fn srcset_url_spans(srcset: &str) -> Vec<Range<usize>> {
    let bytes = srcset.as_bytes();
    let is_space = |byte: u8| is_html_whitespace(byte as char);
    let mut spans = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        while pos < bytes.len() && (is_space(bytes[pos]) || bytes[pos] == b',') {
            pos += 1;
        }
        let start = pos;
        while pos < bytes.len() && !is_space(bytes[pos]) {
            pos += 1;
        }
        if start == pos {
            break;
        }
        let mut end = pos;
        while bytes[end - 1] == b',' {
            end -= 1;
        }
        spans.push(start..end);
        if end < pos {
            continue;
        }
        let mut depth = 0usize;
        while pos < bytes.len() && !(bytes[pos] == b',' && depth == 0) {
            match bytes[pos] {
                b'(' => depth += 1,
                b')' => depth = depth.saturating_sub(1),
                _ => {}
            }
            pos += 1;
        }
    }
    spans
}

/// The URL in `5; url=/next`, `0;URL='/next'` or `0, /next`.
fn refresh_url_span(value: &str) -> Option<Range<usize>> {
    let bytes = value.as_bytes();
    let mut pos = skip_whitespace(value, 0);
    while pos < bytes.len() && (bytes[pos].is_ascii_digit() || bytes[pos] == b'.') {
        pos += 1;
    }
    pos = skip_whitespace(value, pos);
    if pos < bytes.len() && matches!(bytes[pos], b';' | b',') {
        pos = skip_whitespace(value, pos + 1);
    }
    if bytes.len() >= pos + 3 && bytes[pos..pos + 3].eq_ignore_ascii_case(b"url") {
        let after_name = skip_whitespace(value, pos + 3);
        if bytes.get(after_name) == Some(&b'=') {
            pos = skip_whitespace(value, after_name + 1);
        }
    }
    if pos >= bytes.len() {
        return None;
    }
    Some(quoted_or_bare_span(value, pos, |_| false))
}

/// From `start`: the inside of a quoted string, or else the bare run that `ends_bare` ends.
fn quoted_or_bare_span(text: &str, start: usize, ends_bare: impl Fn(char) -> bool) -> Range<usize> {
    if let Some(quote) = quote_at(&text[start..]) {
        let inner = start + quote.len();
        let end = text[inner..].find(quote).map_or(text.len(), |i| inner + i);
        return inner..end;
    }
    let end = text[start..]
        .find(ends_bare)
        .map_or(text.len(), |i| start + i);
    start..end
}

/// The URLs of `url(...)` and `@import "..."` in CSS text, sorted.
fn css_url_spans(css: &str) -> Vec<Range<usize>> {
    // ASCII lowercasing keeps every byte offset, so offsets into `lower` are offsets into `css`.
    let lower = css.to_ascii_lowercase();
    let mut spans = Vec::new();
    for (marker, bare_allowed) in [("url(", true), ("@import", false)] {
        let mut search = 0;
        while let Some(found) = lower[search..].find(marker) {
            let start = skip_whitespace(css, search + found + marker.len());
            search = start;
            if !bare_allowed && quote_at(&css[start..]).is_none() {
                continue;
            }
            let span = quoted_or_bare_span(css, start, |c| c == ')' || is_html_whitespace(c));
            search = span.end;
            spans.push(span);
        }
    }
    spans.sort_by_key(|span| span.start);
    spans
}

fn rewrite_header_values(
    headers: &mut HeaderMap,
    name: HeaderName,
    rewrite: impl Fn(&str) -> Option<String>,
) {
    let Entry::Occupied(mut entry) = headers.entry(name) else {
        return;
    };
    for value in entry.iter_mut() {
        let Some(rewritten) = value.to_str().ok().and_then(&rewrite) else {
            continue;
        };
        if let Ok(rewritten) = HeaderValue::from_str(&rewritten) {
            *value = rewritten;
        }
    }
}

/// How a response body is compressed, among the codings we can undo while streaming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decoding {
    Identity,
    Gzip,
    Deflate,
}

impl Decoding {
    /// `None` for codings we cannot undo (br, zstd, stacked codings): such bodies pass untouched.
    fn of(headers: &HeaderMap) -> Option<Decoding> {
        let mut values = headers.get_all(header::CONTENT_ENCODING).iter();
        let Some(first) = values.next() else {
            return Some(Decoding::Identity);
        };
        if values.next().is_some() {
            return None;
        }
        match first.to_str().ok()?.trim().to_ascii_lowercase().as_str() {
            "" | "identity" => Some(Decoding::Identity),
            "gzip" | "x-gzip" => Some(Decoding::Gzip),
            "deflate" => Some(Decoding::Deflate),
            _ => None,
        }
    }
}

/// Everything decided from the response head before its HTML body is rewritten.
struct HtmlPlan {
    encoding: AsciiCompatibleEncoding,
    /// Only without a charset in Content-Type, which takes precedence over `<meta charset>`.
    adjust_charset_on_meta_tag: bool,
    decoding: Decoding,
}

impl HtmlPlan {
    /// `None` when the body must pass through untouched.
    fn for_response(status: StatusCode, headers: &HeaderMap, body: &Body) -> Option<HtmlPlan> {
        // A 206 carries a byte range of the original: rewriting it would corrupt the whole.
        let without_body = status.is_informational()
            || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
        if without_body
            || status == StatusCode::PARTIAL_CONTENT
            || headers.contains_key(header::CONTENT_RANGE)
            || http_body::Body::is_end_stream(body)
        {
            return None;
        }
        let content_type = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
        let (essence, charset) = parse_content_type(content_type);
        let is_html = essence.eq_ignore_ascii_case("text/html")
            || essence.eq_ignore_ascii_case("application/xhtml+xml");
        if !is_html {
            return None;
        }
        let decoding = Decoding::of(headers)?;
        let encoding = match charset {
            Some(label) => AsciiCompatibleEncoding::new(Encoding::for_label(label.as_bytes())?)?,
            None => AsciiCompatibleEncoding::utf_8(),
        };
        Some(HtmlPlan {
            encoding,
            adjust_charset_on_meta_tag: charset.is_none(),
            decoding,
        })
    }
}

/// `text/html; charset="iso-8859-1"` -> (`text/html`, Some(`iso-8859-1`)).
fn parse_content_type(content_type: &str) -> (&str, Option<&str>) {
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    let charset = parts.find_map(|parameter| {
        let (name, value) = parameter.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"'))
    });
    (essence, charset)
}

fn mark_body_rewritten(headers: &mut HeaderMap, decoding: Decoding) {
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::ACCEPT_RANGES);
    if decoding != Decoding::Identity {
        headers.remove(header::CONTENT_ENCODING);
    }
    // The bytes differ from what the app tagged (decompressed, rewritten) but are equivalent:
    // that is exactly a weak validator, and If-None-Match still matches it.
    if let Some(etag) = headers.get(header::ETAG) {
        if !etag.as_bytes().starts_with(b"W/") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            match HeaderValue::from_bytes(&weak) {
                Ok(weak) => headers.insert(header::ETAG, weak),
                Err(_) => headers.remove(header::ETAG),
            };
        }
    }
}

/// Undoes a Content-Encoding chunk by chunk.
enum Decoder {
    Identity,
    // Multi-member, since concatenated gzip members are a valid gzip body.
    Gzip(MultiGzDecoder<Vec<u8>>),
    Deflate(ZlibDecoder<Vec<u8>>),
}

impl Decoder {
    fn new(decoding: Decoding) -> Decoder {
        match decoding {
            Decoding::Identity => Decoder::Identity,
            Decoding::Gzip => Decoder::Gzip(MultiGzDecoder::new(Vec::new())),
            Decoding::Deflate => Decoder::Deflate(ZlibDecoder::new(Vec::new())),
        }
    }

    fn decode<'a>(&mut self, input: &'a [u8]) -> io::Result<Cow<'a, [u8]>> {
        let output = match self {
            Decoder::Identity => return Ok(Cow::Borrowed(input)),
            Decoder::Gzip(decoder) => {
                decoder.write_all(input)?;
                // Without a flush, inflated bytes may wait in flate2's buffer for the next frame.
                decoder.flush()?;
                std::mem::take(decoder.get_mut())
            }
            Decoder::Deflate(decoder) => {
                decoder.write_all(input)?;
                decoder.flush()?;
                std::mem::take(decoder.get_mut())
            }
        };
        Ok(Cow::Owned(output))
    }

    /// Checks the stream is complete and returns what was still buffered.
    fn finish(&mut self) -> io::Result<Vec<u8>> {
        match self {
            Decoder::Identity => Ok(Vec::new()),
            Decoder::Gzip(decoder) => {
                decoder.try_finish()?;
                Ok(std::mem::take(decoder.get_mut()))
            }
            Decoder::Deflate(decoder) => {
                decoder.try_finish()?;
                Ok(std::mem::take(decoder.get_mut()))
            }
        }
    }
}

/// Where lol_html writes its output, drained by the body between polls. Shared because the
/// rewriter owns its sink and offers no way to reach it afterwards.
#[derive(Clone, Default)]
struct SharedOutput(Arc<Mutex<Vec<u8>>>);

impl SharedOutput {
    fn take(&self) -> Option<Bytes> {
        let mut buffer = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (!buffer.is_empty()).then(|| Bytes::from(std::mem::take(&mut *buffer)))
    }

    fn clear(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl OutputSink for SharedOutput {
    fn handle_chunk(&mut self, chunk: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(chunk);
    }
}

type Rewriter = send::HtmlRewriter<'static, SharedOutput>;

fn new_html_rewriter(prefix: &PrefixRewriter, plan: &HtmlPlan, output: SharedOutput) -> Rewriter {
    let for_elements = prefix.clone();
    let for_style = prefix.clone();
    let mut style_text = StyleText::default();
    let settings: send::Settings<'static, 'static> = Settings {
        element_content_handlers: vec![
            element!("*", move |element| rewrite_element(&for_elements, element)),
            text!("style", move |chunk| style_text.rewrite(&for_style, chunk)),
        ],
        encoding: plan.encoding,
        memory_settings: MemorySettings {
            max_allowed_memory_usage: MAX_REWRITER_MEMORY,
            ..MemorySettings::new()
        },
        // Strict mode aborts on markup whose parse it cannot be sure of; a page with such markup
        // is better served with its URLs rewritten as parsed than cut off.
        strict: false,
        adjust_charset_on_meta_tag: plan.adjust_charset_on_meta_tag,
        ..Settings::new_send()
    };
    send::HtmlRewriter::new(settings, output)
}

/// The attributes of `tag` that hold a single URL.
fn url_attributes(tag: &str) -> &'static [&'static str] {
    match tag {
        "area" | "base" | "link" => &["href"],
        // `a`, `use` and `image` may be SVG, where older documents write `xlink:href`.
        "a" | "use" | "image" => &["href", "xlink:href"],
        "script" | "img" | "iframe" | "frame" | "source" | "audio" | "embed" | "track" => &["src"],
        "input" => &["src", "formaction"],
        "button" => &["formaction"],
        "form" => &["action"],
        "video" => &["src", "poster"],
        "object" => &["data"],
        _ => &[],
    }
}

fn rewrite_element(prefix: &PrefixRewriter, element: &mut send::Element<'_, '_>) -> HandlerResult {
    let tag = element.tag_name();
    for name in url_attributes(&tag) {
        rewrite_attribute(element, name, |value| prefix.rewrite_url(value))?;
    }
    let srcset = match tag.as_str() {
        "img" | "source" => Some("srcset"),
        "link" => Some("imagesrcset"),
        _ => None,
    };
    if let Some(name) = srcset {
        rewrite_attribute(element, name, |value| prefix.rewrite_srcset(value))?;
    }
    let is_refresh = tag == "meta"
        && element
            .get_attribute("http-equiv")
            .is_some_and(|value| value.trim().eq_ignore_ascii_case("refresh"));
    if is_refresh {
        rewrite_attribute(element, "content", |value| prefix.rewrite_refresh(value))?;
    }
    rewrite_attribute(element, "style", |value| prefix.rewrite_css(value))
}

fn rewrite_attribute(
    element: &mut send::Element<'_, '_>,
    name: &str,
    rewrite: impl FnOnce(&str) -> Option<String>,
) -> HandlerResult {
    if let Some(rewritten) = element
        .get_attribute(name)
        .and_then(|value| rewrite(&value))
    {
        element.set_attribute(name, &rewritten)?;
    }
    Ok(())
}

/// Collects the text of one `<style>` element, which lol_html may hand over in several chunks
/// that each could split a `url(...)`, and rewrites it whole at the last chunk.
#[derive(Default)]
struct StyleText {
    buffered: String,
    /// Set after an oversized element was given up on, until its last chunk.
    passing_through: bool,
}

impl StyleText {
    fn rewrite(&mut self, prefix: &PrefixRewriter, chunk: &mut TextChunk<'_>) -> HandlerResult {
        let last = chunk.last_in_text_node();
        if self.passing_through {
            self.passing_through = !last;
            return Ok(());
        }
        self.buffered.push_str(chunk.as_str());
        if last {
            let css = std::mem::take(&mut self.buffered);
            chunk.set_str(prefix.rewrite_css(&css).unwrap_or(css));
        } else if self.buffered.len() > MAX_STYLE_TEXT {
            chunk.set_str(std::mem::take(&mut self.buffered));
            self.passing_through = true;
        } else {
            chunk.set_str(String::new());
        }
        Ok(())
    }
}

/// An HTML body rewritten while it streams: each inner frame is decoded, fed to lol_html, and
/// whatever lol_html has produced so far is sent on.
struct HtmlRewriteBody {
    inner: Body,
    /// Input taken from `inner` but not yet fed, see [`FEED_SLICE`].
    pending: Bytes,
    decoder: Decoder,
    fed_any: bool,
    /// `None` once the document is finished, or abandoned after an error.
    rewriter: Option<Rewriter>,
    output: SharedOutput,
    trailers: Option<HeaderMap>,
}

impl HtmlRewriteBody {
    fn new(inner: Body, prefix: &PrefixRewriter, plan: &HtmlPlan) -> HtmlRewriteBody {
        let output = SharedOutput::default();
        HtmlRewriteBody {
            inner,
            pending: Bytes::new(),
            decoder: Decoder::new(plan.decoding),
            fed_any: false,
            rewriter: Some(new_html_rewriter(prefix, plan, output.clone())),
            output,
            trailers: None,
        }
    }

    fn feed(&mut self, input: &[u8]) -> Result<(), BoxError> {
        let Some(rewriter) = self.rewriter.as_mut() else {
            return Ok(());
        };
        self.fed_any = true;
        let decoded = self.decoder.decode(input)?;
        rewriter.write(&decoded)?;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        let Some(mut rewriter) = self.rewriter.take() else {
            return Ok(());
        };
        // An empty body (a HEAD answer, say) is no truncated gzip stream.
        if self.fed_any {
            let tail = self.decoder.finish()?;
            rewriter.write(&tail)?;
        }
        rewriter.end()?;
        Ok(())
    }

    /// Stops the body for good: nothing half-rewritten is sent after an error.
    fn fail(&mut self, error: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rewriter = None;
        self.pending = Bytes::new();
        self.trailers = None;
        self.output.clear();
        Poll::Ready(Some(Err(error)))
    }
}

impl http_body::Body for HtmlRewriteBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(chunk) = this.output.take() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if this.rewriter.is_none() {
                return Poll::Ready(
                    this.trailers
                        .take()
                        .map(|trailers| Ok(Frame::trailers(trailers))),
                );
            }
            if !this.pending.is_empty() {
                let slice = this.pending.split_to(this.pending.len().min(FEED_SLICE));
                if let Err(error) = this.feed(&slice) {
                    return this.fail(error);
                }
                continue;
            }
            let finished = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.pending = data;
                        Ok(())
                    }
                    // Trailers come last: the document is complete.
                    Err(frame) => {
                        this.trailers = frame.into_trailers().ok();
                        this.finish()
                    }
                },
                Some(Err(error)) => Err(error),
                None => this.finish(),
            };
            if let Err(error) = finished {
                return this.fail(error);
            }
        }
    }
}

#[cfg(test)]
#[path = "rewrite_tests.rs"]
mod tests;
