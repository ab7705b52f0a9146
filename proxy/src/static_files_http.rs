//! Pure HTTP helpers: preconditions, byte ranges, Accept-Encoding, content types, charset sniffing.

use http::header::{self, HeaderMap, HeaderName};
use httpdate::HttpDate;
use mime_guess::{mime, Mime};

use super::Representation;

/// The request headers that choose between 200, 206 and 304, copied so that the choice is made
/// in the blocking hop before anything is opened. Copies are cheap: header values share the
/// buffer the request was read into, and an empty map allocates nothing.
pub(super) fn precondition_headers(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for name in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::RANGE,
        header::IF_RANGE,
    ] {
        for value in headers.get_all(&name) {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

/// RFC 9110 §13.2.2: If-None-Match decides alone when present; If-Modified-Since only otherwise.
pub(super) fn is_not_modified(headers: &HeaderMap, representation: &Representation) -> bool {
    if headers.contains_key(header::IF_NONE_MATCH) {
        return if_none_match_matches(headers, &representation.etag);
    }
    let since = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<HttpDate>().ok());
    match (since, representation.last_modified) {
        (Some(since), Some(last_modified)) => last_modified <= since,
        _ => false,
    }
}

/// Weak comparison, as If-None-Match requires: `W/"x"` matches `"x"`.
fn if_none_match_matches(headers: &HeaderMap, etag: &str) -> bool {
    header_items(headers, header::IF_NONE_MATCH)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// Comma-separated items of every instance of a header, trimmed, empty ones dropped.
fn header_items(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// A byte range to serve, inclusive at both ends.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ByteRange {
    Full,
    Partial { start: u64, end: u64 },
    Unsatisfiable,
}

pub(super) fn requested_range(
    headers: &HeaderMap,
    representation: &Representation,
    length: u64,
) -> ByteRange {
    let mut ranges = headers.get_all(header::RANGE).into_iter();
    let (Some(range), None) = (ranges.next(), ranges.next()) else {
        return ByteRange::Full;
    };
    let Ok(range) = range.to_str() else {
        return ByteRange::Full;
    };
    if !if_range_matches(headers, representation) {
        return ByteRange::Full;
    }
    parse_range(range, length)
}

/// If-Range needs a strong match: a weak ETag never matches, a date only when it is the
/// Last-Modified exactly.
fn if_range_matches(headers: &HeaderMap, representation: &Representation) -> bool {
    let Some(value) = headers.get(header::IF_RANGE) else {
        return true;
    };
    let Ok(value) = value.to_str().map(str::trim) else {
        return false;
    };
    if value.starts_with('"') || value.starts_with("W/") {
        return value == representation.etag;
    }
    match (value.parse::<HttpDate>(), representation.last_modified) {
        (Ok(date), Some(last_modified)) => date == last_modified,
        _ => false,
    }
}

/// Single ranges only; anything else is ignored (a full 200), which RFC 9110 allows.
fn parse_range(value: &str, length: u64) -> ByteRange {
    let Some((unit, spec)) = value.trim().split_once('=') else {
        return ByteRange::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return ByteRange::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return match parse_digits(last) {
            Some(0) => ByteRange::Unsatisfiable,
            Some(_) if length == 0 => ByteRange::Unsatisfiable,
            Some(suffix) => ByteRange::Partial {
                start: length - suffix.min(length),
                end: length - 1,
            },
            None => ByteRange::Full,
        };
    }
    let Some(start) = parse_digits(first) else {
        return ByteRange::Full;
    };
    let end = match parse_digits(last) {
        _ if last.is_empty() => u64::MAX,
        Some(end) if end >= start => end,
        _ => return ByteRange::Full,
    };
    if start >= length {
        return ByteRange::Unsatisfiable;
    }
    ByteRange::Partial {
        start,
        end: end.min(length - 1),
    }
}

/// `u64::from_str` would also take a leading `+`, which a byte range does not allow.
fn parse_digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Whether Accept-Encoding allows gzip: explicitly, or through `*`, with q > 0. An absent header
/// gets the identity variant: clients that decompress say so.
pub(super) fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip_quality = None;
    let mut any_quality = None;
    for item in header_items(headers, header::ACCEPT_ENCODING) {
        let mut parameters = item.split(';');
        let coding = parameters.next().unwrap_or_default().trim();
        let quality = parameters
            .filter_map(|parameter| parameter.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, value)| value.trim().parse::<f32>().unwrap_or(0.0));
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip_quality = Some(quality);
        } else if coding == "*" {
            any_quality = Some(quality);
        }
    }
    gzip_quality
        .or(any_quality)
        .is_some_and(|quality| quality > 0.0)
}

pub(super) fn is_html(mime: &Mime) -> bool {
    mime.type_() == mime::TEXT && mime.subtype() == mime::HTML
}

fn is_text(mime: &Mime) -> bool {
    mime.type_() == mime::TEXT
        || matches!(
            mime.essence_str(),
            "application/javascript" | "application/json" | "image/svg+xml" | "application/xml"
        )
        || mime.suffix() == Some(mime::JSON)
        || mime.suffix() == Some(mime::XML)
}

pub(super) fn content_type(mime: &Mime, html_charset: Option<&str>) -> String {
    if is_html(mime) {
        format!("text/html; charset={}", html_charset.unwrap_or("utf-8"))
    } else if is_text(mime) {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.essence_str().to_owned()
    }
}

/// The charset an HTML document declares in a `<meta>` within `head`, lowercased, if it names
/// an encoding browsers know.
pub(super) fn sniff_html_charset(head: &[u8]) -> Option<String> {
    let lowered = head.to_ascii_lowercase();
    let mut rest = lowered.as_slice();
    while let Some(at) = find(rest, b"<meta") {
        rest = &rest[at + b"<meta".len()..];
        let tag_end = rest
            .iter()
            .position(|&byte| byte == b'>')
            .unwrap_or(rest.len());
        if let Some(charset) = charset_in_meta(&rest[..tag_end]) {
            return Some(charset);
        }
    }
    None
}

/// Finds `charset=<label>` in a meta tag; covers both `charset="x"` and `content="...; charset=x"`.
fn charset_in_meta(mut tag: &[u8]) -> Option<String> {
    while let Some(at) = find(tag, b"charset") {
        tag = &tag[at + b"charset".len()..];
        let Some(value) = tag.trim_ascii_start().strip_prefix(b"=") else {
            continue;
        };
        let value = value.trim_ascii_start();
        let value = value
            .strip_prefix(b"\"")
            .or_else(|| value.strip_prefix(b"'"))
            .unwrap_or(value);
        let label_end = value
            .iter()
            .position(|&byte| !(byte.is_ascii_alphanumeric() || b"-_.:".contains(&byte)))
            .unwrap_or(value.len());
        let label = &value[..label_end];
        let encoding = encoding_rs::Encoding::for_label(label)?;
        // HTML's rules: a <meta> cannot declare UTF-16 (the bytes read as ASCII to get here), and
        // x-user-defined means windows-1252.
        return Some(
            if encoding == encoding_rs::UTF_16BE || encoding == encoding_rs::UTF_16LE {
                "utf-8".to_owned()
            } else if encoding == encoding_rs::X_USER_DEFINED {
                "windows-1252".to_owned()
            } else {
                String::from_utf8_lossy(label).into_owned()
            },
        );
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_parsing_edge_cases() {
        assert_eq!(
            parse_range("bytes=0-0", 10),
            ByteRange::Partial { start: 0, end: 0 }
        );
        assert_eq!(
            parse_range("Bytes = 1 - 2", 10),
            ByteRange::Partial { start: 1, end: 2 }
        );
        assert_eq!(parse_range("bytes=0-", 0), ByteRange::Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), ByteRange::Unsatisfiable);
        assert_eq!(parse_range("bytes=-", 10), ByteRange::Full);
        assert_eq!(parse_range("bytes=1", 10), ByteRange::Full);
    }
}
