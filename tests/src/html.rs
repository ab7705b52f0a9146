//! Pulls every URL out of an HTML page, the way a browser would find them.

use lol_html::{element, rewrite_str, RewriteStrSettings};

/// Each URL-bearing attribute value in `html` (href, src, action, srcset candidates, poster,
/// meta refresh targets), in document order.
pub fn links(html: &str) -> Vec<String> {
    let found = std::cell::RefCell::new(Vec::new());
    let settings = RewriteStrSettings {
        element_content_handlers: vec![element!("*", |el| {
            for attribute in ["href", "src", "action", "poster", "formaction"] {
                if let Some(value) = el.get_attribute(attribute) {
                    found.borrow_mut().push(value);
                }
            }
            if let Some(srcset) = el.get_attribute("srcset") {
                for candidate in srcset.split(',') {
                    if let Some(url) = candidate.split_whitespace().next() {
                        found.borrow_mut().push(url.to_owned());
                    }
                }
            }
            if el.tag_name() == "meta" {
                if let Some(content) = el.get_attribute("content") {
                    if let Some((_, url)) = content.split_once("url=") {
                        found.borrow_mut().push(url.trim().to_owned());
                    }
                }
            }
            Ok(())
        })],
        ..RewriteStrSettings::new()
    };
    rewrite_str(html, settings).expect("parse html");
    found.into_inner()
}

/// The `<base href>` of `html`, if it has one.
pub fn base_href(html: &str) -> Option<String> {
    let found = std::cell::RefCell::new(None);
    let settings = RewriteStrSettings {
        element_content_handlers: vec![element!("base[href]", |el| {
            found
                .borrow_mut()
                .get_or_insert(el.get_attribute("href").unwrap_or_default());
            Ok(())
        })],
        ..RewriteStrSettings::new()
    };
    rewrite_str(html, settings).expect("parse html");
    found.into_inner()
}
